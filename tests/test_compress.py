"""int8 export: round trip, size, scores close to the float model, malformed files rejected."""
import json

import pytest
import torch
from safetensors.torch import load as st_load, save as st_save

from model.checkpoint import CheckpointError, CheckpointMeta, save_checkpoint
from model.compress import (FORMAT_INT8, dequantize, load_int8, main, model_from_int8_bytes,
                            model_to_int8_bytes, quantize, save_int8)
from model.config import ModelConfig
from model.lstm import NextWordLSTM

torch.set_num_threads(1)
SHA = "ab" * 32


@pytest.fixture(scope="module")
def model() -> NextWordLSTM:
    torch.manual_seed(0)
    m = NextWordLSTM(ModelConfig(vocab_size=3000, embed_dim=32, hidden_size=96)).eval()
    with torch.no_grad():
        for p in m.parameters():  # weights of a trained scale, not the tiny init
            p.add_(torch.randn_like(p) * 0.1)
    return m


def meta(m: NextWordLSTM) -> CheckpointMeta:
    return CheckpointMeta(m.config, SHA, version=7, training={"kind": "test"})


def test_quantize_is_per_row_symmetric():
    w = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.0, -2.0]])
    q, scale = quantize(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert scale.tolist() == pytest.approx([1 / 127, 1.0, 3 / 127])
    assert q[0].tolist() == [64, -127, 32] and q[1].tolist() == [0, 0, 0]
    assert (dequantize(q, scale) - w).abs().max() <= scale.max() / 2 + 1e-7


def test_round_trip_keeps_metadata_and_weights_within_half_a_step(model, tmp_path):
    save_int8(tmp_path / "m.int8.safetensors", model, meta(model))
    again, m = load_int8(tmp_path / "m.int8.safetensors", tokenizer_sha256=SHA)
    assert (m.config, m.version, m.training, m.tokenizer_sha256) == \
        (model.config, 7, {"kind": "test"}, SHA)
    stored = st_load((tmp_path / "m.int8.safetensors").read_bytes())
    for name, original in model.state_dict().items():
        restored = again.state_dict()[name]
        if original.dim() == 2:
            assert stored[name].dtype == torch.int8
            step = stored[name + ".scale"][:, None]
            assert ((restored - original).abs() <= step / 2 + 1e-6).all()
        else:
            assert torch.equal(restored, original)


def test_about_a_quarter_of_the_float_size(model, tmp_path):
    save_checkpoint(tmp_path / "float.safetensors", model, meta(model))
    save_int8(tmp_path / "int8.safetensors", model, meta(model))
    ratio = (tmp_path / "int8.safetensors").stat().st_size / \
        (tmp_path / "float.safetensors").stat().st_size
    assert 0.25 < ratio < 0.32


def test_scores_close_to_the_float_model(model):
    again, _ = model_from_int8_bytes(model_to_int8_bytes(model, meta(model)))
    ids = torch.randint(4, 3000, (8, 12))
    with torch.inference_mode():
        a = torch.log_softmax(model(ids)[0], -1)
        b = torch.log_softmax(again(ids)[0], -1)
    assert (a - b).abs().max() < 0.1
    top_a, top_b = a.topk(3, dim=-1).indices, b.topk(3, dim=-1).indices
    assert (top_a[..., 0] == top_b[..., 0]).float().mean() > 0.9


def tamper(data: bytes, change) -> bytes:
    tensors = st_load(data)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    metadata = header["__metadata__"]
    change(tensors, metadata)
    return st_save(tensors, metadata=metadata)


@pytest.mark.parametrize("change, message", [
    (lambda t, m: m.update(format="private-keyboard/checkpoint-1"), "not a"),
    (lambda t, m: t.update({"embedding.weight.scale": torch.full((3000,), float("nan"))}),
     "finite and positive"),
    (lambda t, m: t.update({"embedding.weight.scale": torch.ones(10)}), "shape"),
    (lambda t, m: t.update({"embedding.weight": t["embedding.weight"].float()}), "int8"),
    (lambda t, m: t.update({"output_bias": torch.full((3000,), float("inf"))}), "finite"),
    (lambda t, m: t.pop("lstm.weight_hr_l0.scale"), "unexpected"),
    (lambda t, m: t.update({"extra": torch.ones(1)}), "unexpected"),
    (lambda t, m: m.update(config="{}"), "metadata"),
])
def test_malformed_files_are_rejected(model, change, message):
    good = model_to_int8_bytes(model, meta(model))
    with pytest.raises(CheckpointError, match=message):
        model_from_int8_bytes(tamper(good, change))


def test_rejects_truncated_and_wrong_tokenizer(model, tmp_path):
    good = model_to_int8_bytes(model, meta(model))
    with pytest.raises(CheckpointError, match="truncated|malformed"):
        model_from_int8_bytes(good[:len(good) // 2])
    with pytest.raises(CheckpointError, match="tokenizer"):
        model_from_int8_bytes(good, tokenizer_sha256="cd" * 32)
    with pytest.raises(CheckpointError, match="not found"):
        load_int8(tmp_path / "missing.safetensors")
    assert FORMAT_INT8.endswith("int8")


def test_command_line_prints_both_sizes(model, tmp_path, capsys):
    save_checkpoint(tmp_path / "float.safetensors", model, meta(model))
    assert main([str(tmp_path / "float.safetensors"), str(tmp_path / "out.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert f"{(tmp_path / 'float.safetensors').stat().st_size:,}" in printed
    assert f"{(tmp_path / 'out.safetensors').stat().st_size:,}" in printed
    assert main([str(tmp_path / "missing"), str(tmp_path / "x")]) == 1
