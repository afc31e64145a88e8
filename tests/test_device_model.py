"""The NumPy device runtime against the PyTorch reference: same ids, log-probs, gradients,
updates and files (the tolerances of issue 19)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from data import load_split
from device_model import checkpoint as dcheck
from device_model import lstm as lstm_module
from device_model.lstm import Dropout, NumpyLSTM, loss_and_grads
from device_model.scorer import NumpyScorer
from device_model.tokenizer import DeviceTokenizer, TokenizerError
from device_model.train import TrainConfig, dropout_rng, pad
from device_model.train import train as np_train
from model.checkpoint import CheckpointError, CheckpointMeta, model_from_bytes, model_to_bytes
from model.compress import model_from_int8_bytes, model_to_int8_bytes
from model.config import ModelConfig
from model.lstm import NextWordLSTM
from model.compress import load_any
from model.paths import PRETRAINED_MODEL, SHIPPED_MODEL, SHIPPED_TOKENIZER, TOKENIZER_PATH
from model.lstm import LSTMScorer
from model.tokenizer import WordTokenizer
from model.train import train as torch_train

torch.set_num_threads(1)
SMALL = dict(embed_dim=24, hidden_size=40)
REAL = ModelConfig()  # 10,004 x 96, 670 units: the shipped architecture


@pytest.fixture(scope="module")
def messages() -> list[str]:
    return [m for d in load_split("public")[:40] for m in d.messages][:1500]


@pytest.fixture(scope="module")
def tokenizer(messages) -> WordTokenizer:
    return WordTokenizer.build(messages, vocab_size=500)


def torch_model(config: ModelConfig, seed: int = 0, spread: float = 0.0) -> NextWordLSTM:
    """A model with PyTorch's initialisation, biases and output bias made non-zero."""
    torch.manual_seed(seed)
    model = NextWordLSTM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.normal_(0.0, 0.1)
            if spread:
                p.mul_(1.0 + spread * torch.randn_like(p))
    return model.eval()


def as_numpy(model: NextWordLSTM) -> NumpyLSTM:
    return NumpyLSTM({k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
                     model.config)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# --------------------------------------------------------------------------- log-probs
def _log_prob_gap(model: NextWordLSTM, ids: list[int]) -> float:
    reference, ours = LSTMScorer(model), as_numpy(model)
    state_t, state_n, gap = reference.start(), ours.step(None, 2), 0.0
    for word_id in ids:
        gap = max(gap, float(np.abs(reference.log_probs(state_t) - ours.log_probs(state_n)).max()))
        state_t, state_n = reference.step(state_t, word_id), ours.step(state_n, word_id)
    return gap


@pytest.fixture(params=["blas", "einsum"])
def products(request, monkeypatch) -> str:
    """Both ways `device_model.lstm.mm` multiplies: BLAS, and einsum (numpy without BLAS,
    as python-for-android builds it)."""
    monkeypatch.setattr(lstm_module, "HAS_BLAS", request.param == "blas")
    return request.param


@pytest.mark.parametrize("spread", [0.0, 1.0])
def test_log_probs_match_torch_on_random_real_size_weights(spread, products):
    model = torch_model(REAL, seed=3, spread=spread)
    ids = np.random.default_rng(0).integers(4, REAL.vocab_size, 40).tolist()
    assert _log_prob_gap(model, ids) < 1e-5


@pytest.mark.skipif(not (PRETRAINED_MODEL.is_file() and TOKENIZER_PATH.is_file()),
                    reason="no pre-trained model in .cache/pretrained (python -m model.pretrain)")
def test_log_probs_and_int8_match_torch_on_the_pretrained_model():
    data = PRETRAINED_MODEL.read_bytes()
    model, meta = model_from_bytes(data)
    tok = DeviceTokenizer.load(TOKENIZER_PATH)
    ids = tok.encode("hey how are you doing today? i was thinking we could go out tonight")
    assert _log_prob_gap(model, ids) < 1e-5
    int8 = model_to_int8_bytes(model, meta)
    weights, _ = dcheck.weights_from_bytes(int8, tokenizer_sha256=tok.sha256)
    assert _log_prob_gap(model_from_int8_bytes(int8)[0], ids) < 1e-5
    for name, value in model_from_int8_bytes(int8)[0].state_dict().items():
        assert np.array_equal(weights[name], value.numpy())


def test_log_probs_and_gradients_match_torch_on_the_shipped_model(products):
    """Real weights in every checkout: the public pre-trained model shipped as int8."""
    tok = DeviceTokenizer.load(SHIPPED_TOKENIZER)
    model, _ = load_any(SHIPPED_MODEL, tok.sha256)
    ids = tok.encode("hey how are you doing today? i was thinking we could go out tonight")
    assert _log_prob_gap(model, ids) < 1e-5
    weights, _ = dcheck.load_weights(SHIPPED_MODEL, tok.sha256)
    assert all(np.array_equal(weights[k], v.numpy()) for k, v in model.state_dict().items())
    batch = pad([tok.encode_message(t) for t in ("see you at the party tonight", "ok",
                                                 "I'm not sure what you mean by that")], 0)
    model.drop = NumpyMasks(Dropout(0.2, np.random.default_rng(8)))
    expected = _torch_grads(model, batch, 0)
    _, _, grads = loss_and_grads(weights, batch, 0, Dropout(0.2, np.random.default_rng(8)))
    for name in expected:
        assert relative(grads[name], expected[name]) < 1e-4, name


# --------------------------------------------------------------------------- gradients
class NumpyMasks(nn.Module):
    """Stands in for the torch model's dropout: the NumPy path's masks, in its order."""

    def __init__(self, dropout: Dropout) -> None:
        super().__init__()
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.dropout.mask(tuple(x.shape)) if self.training else None
        return x if mask is None else x * torch.from_numpy(mask)


def _torch_grads(model: NextWordLSTM, ids: np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
    model.train()
    batch = torch.from_numpy(ids)
    logits, _ = model(batch[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                           ignore_index=pad_id)
    model.zero_grad()
    loss.backward()
    return {k: p.grad.numpy().copy() for k, p in model.named_parameters()}


@pytest.mark.parametrize("config, dropout", [
    (ModelConfig(vocab_size=300, dropout=0.0, **SMALL), 0.0),
    (ModelConfig(vocab_size=300, dropout=0.3, **SMALL), 0.3),
    (REAL, 0.1)])
def test_gradients_match_torch(config, dropout, products):
    rng = np.random.default_rng(1)
    lengths = rng.integers(2, 30, 16)
    seqs = [[2, *rng.integers(1, config.vocab_size, n - 2).tolist(), 3] for n in lengths]
    ids = pad(seqs, 0)
    model = torch_model(config, seed=1)
    model.drop = NumpyMasks(Dropout(dropout, np.random.default_rng(5)))
    expected = _torch_grads(model, ids, 0)
    ours = as_numpy(model)
    _, count, grads = loss_and_grads(ours.weights, ids, 0, Dropout(dropout,
                                                                   np.random.default_rng(5)))
    assert count == int((ids[:, 1:] != 0).sum())
    assert set(grads) == set(expected)
    for name in expected:
        assert relative(grads[name], expected[name]) < 1e-4, name


# --------------------------------------------------------------------------- one local round
@pytest.mark.parametrize("optimizer, dropout", [("adam", 0.2), ("sgd", 0.0), ("adamw", 0.1)])
def test_one_local_round_matches_torch(tokenizer, messages, optimizer, dropout):
    config = ModelConfig(vocab_size=tokenizer.vocab_size, dropout=dropout, **SMALL)
    start = torch_model(config, seed=2)
    sequences = tokenizer.encode_messages(messages[:150])
    train_config = TrainConfig(epochs=1.5, batch_size=16, lr=0.05 if optimizer == "sgd" else 3e-3,
                               optimizer=optimizer, seed=11, weight_decay=0.01, grad_clip=1.0,
                               schedule="cosine")
    before = {k: v.detach().numpy().copy() for k, v in start.state_dict().items()}
    reference = torch_model(config, seed=2)
    reference.drop = NumpyMasks(Dropout(dropout, dropout_rng(train_config.seed)))
    ref_result = torch_train(reference, sequences, train_config, progress=False)
    ours = as_numpy(start)
    result = np_train(ours, sequences, train_config)
    assert (result.steps, result.tokens) == (ref_result.steps, ref_result.tokens)
    assert result.steps > 5
    assert result.mean_loss == pytest.approx(ref_result.mean_loss, rel=1e-5)
    ref_delta = np.concatenate([(v.numpy() - before[k]).ravel()
                                for k, v in reference.state_dict().items()])
    our_delta = np.concatenate([(ours.weights[k] - before[k]).ravel() for k in before])
    assert relative(our_delta, ref_delta) < 1e-4


@pytest.mark.parametrize("names", [("output_bias",), ("output_bias", "lstm.weight_hr_l0")])
def test_training_part_of_the_model_matches_torch_with_the_rest_frozen(tokenizer, messages,
                                                                       names):
    """`trainable` (the device's personal fine-tuning) is PyTorch training with the other
    parameters not requiring gradients: same steps, same update, the rest untouched; both
    loops call `on_epoch` after each epoch and the mean losses agree."""
    from device_model.train import mean_loss as np_mean_loss
    from model.train import mean_loss as torch_mean_loss
    config = ModelConfig(vocab_size=tokenizer.vocab_size, dropout=0.2, **SMALL)
    sequences = tokenizer.encode_messages(messages[:120])
    train_config = TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=4, grad_clip=0.5)
    before = {k: v.detach().numpy().copy() for k, v in torch_model(config, 3).state_dict().items()}
    reference = torch_model(config, seed=3)
    reference.drop = NumpyMasks(Dropout(0.2, dropout_rng(train_config.seed)))
    for name, p in reference.named_parameters():
        p.requires_grad_(name in names)
    seen: dict[str, list] = {"torch": [], "numpy": []}
    torch_train(reference, sequences, train_config, progress=False,
                on_epoch=lambda e, m: seen["torch"].append(torch_mean_loss(m, sequences[:20])))
    ours = as_numpy(torch_model(config, seed=3))
    np_train(ours, sequences, train_config, trainable=list(names),
             on_epoch=lambda e, m: seen["numpy"].append(np_mean_loss(m, sequences[:20])))
    assert len(seen["numpy"]) == len(seen["torch"]) == 2
    assert seen["numpy"] == pytest.approx(seen["torch"], rel=1e-5)
    for k, v in reference.state_dict().items():
        if k in names:
            assert relative(ours.weights[k] - before[k], v.numpy() - before[k]) < 1e-4, k
            assert not np.array_equal(ours.weights[k], before[k]), k
        else:
            assert np.array_equal(ours.weights[k], before[k]), k


def test_a_stopped_round_says_so(tokenizer, messages):
    config = ModelConfig(vocab_size=tokenizer.vocab_size, **SMALL)
    model = as_numpy(torch_model(config))
    calls = iter(range(100))
    result = np_train(model, tokenizer.encode_messages(messages[:200]), TrainConfig(batch_size=8),
                      should_stop=lambda: next(calls) >= 3)
    assert result.stopped and result.steps == 3


# --------------------------------------------------------------------------- tokenizer
TRICKY = ["Hello, I'm HERE!! 'quoted' don't 12 café 🙂", "", "   ", "<unk> <UNK> a<bos>b<eos>",
          "İstanbul KELVIN \u212a ΣΑΣ rock'n'roll ''' it's-a 3.14 x'", "tab\tnew\nline",
          "<pad><pad>pad", "ＦＵＬＬ width"]


def test_tokenizer_gives_the_same_ids_as_tokenizers(tokenizer, messages):
    ours = DeviceTokenizer.from_json(tokenizer.to_json())
    assert ours.sha256 == tokenizer.sha256 and ours.id_to_word == tokenizer.id_to_word
    texts = TRICKY + messages
    assert [ours.encode(t) for t in texts] == [tokenizer.encode(t) for t in texts]
    assert ours.encode_messages(texts) == tokenizer.encode_messages(texts)
    assert ours.encode_message(TRICKY[0]) == tokenizer.encode_message(TRICKY[0])


@pytest.mark.skipif(not TOKENIZER_PATH.is_file(), reason="no tokenizer in .cache/pretrained")
def test_tokenizer_reads_the_pretrained_file_identically(messages):
    reference, ours = WordTokenizer.load(TOKENIZER_PATH), DeviceTokenizer.load(TOKENIZER_PATH)
    assert ours.sha256 == reference.sha256 and ours.vocab_size == reference.vocab_size
    texts = TRICKY + messages
    assert [ours.encode(t) for t in texts] == [reference.encode(t) for t in texts]


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(normalizer=None), "unsupported normalizer"),
    (lambda s: s["pre_tokenizer"].update(invert=False), "unsupported pre_tokenizer"),
    (lambda s: s["model"].update(type="BPE"), "WordLevel"),
    (lambda s: s["model"]["vocab"].update({"<pad>": 9}), "0..n-1|special"),
    (lambda s: s["added_tokens"][0].update(lstrip=True), "added token"),
])
def test_tokenizer_refuses_other_configurations(tokenizer, change, message):
    spec = json.loads(tokenizer.to_json())
    change(spec)
    with pytest.raises(TokenizerError, match=message):
        DeviceTokenizer.from_json(json.dumps(spec))
    with pytest.raises(TokenizerError, match="not a tokenizer.json"):
        DeviceTokenizer.from_json("{not json")


# --------------------------------------------------------------------------- model files
def test_model_files_read_and_write_like_torch(tokenizer):
    config = ModelConfig(vocab_size=tokenizer.vocab_size, **SMALL)
    model = torch_model(config)
    meta = CheckpointMeta(config, tokenizer.sha256, 4, {"source": "test"})
    weights, got = dcheck.weights_from_bytes(model_to_bytes(model, meta), tokenizer.sha256, config)
    assert got == meta
    for name, value in model.state_dict().items():
        assert np.array_equal(weights[name], value.numpy())
        assert weights[name].flags.writeable
    again, got = model_from_bytes(dcheck.weights_to_bytes(weights, meta), tokenizer.sha256)
    assert got == meta
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    int8_bytes = model_to_int8_bytes(model, meta)
    int8, _ = dcheck.weights_from_bytes(int8_bytes)
    for name, value in model_from_int8_bytes(int8_bytes)[0].state_dict().items():
        assert np.array_equal(int8[name], value.numpy())


def test_model_file_errors(tokenizer):
    config = ModelConfig(vocab_size=tokenizer.vocab_size, **SMALL)
    model = torch_model(config)
    meta = CheckpointMeta(config, tokenizer.sha256, 1, {})
    data = model_to_bytes(model, meta)
    for bad, message in [(data[:4], "truncated"), (data[:len(data) // 2], "truncated"),
                         (model_to_bytes(torch_model(ModelConfig(vocab_size=tokenizer.vocab_size,
                                                                 embed_dim=8, hidden_size=12)),
                                         meta), "do not fit the architecture")]:
        with pytest.raises(CheckpointError, match=message):
            dcheck.weights_from_bytes(bad)
    with pytest.raises(CheckpointError, match="not the loaded tokenizer"):
        dcheck.weights_from_bytes(data, tokenizer_sha256="0" * 64)
    with torch.no_grad():
        model.lstm.weight_hh_l0[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        dcheck.weights_from_bytes(model_to_bytes(model, meta))
    with pytest.raises(CheckpointError, match="not a private-keyboard"):
        dcheck.weights_from_bytes(dcheck.tensorfile.save({"x": np.zeros(2, np.float32)}))


# --------------------------------------------------------------------------- the predictor
def test_suggestions_and_scores_match_torch_on_real_size_weights(tokenizer, messages):
    from model.predictor import Predictor
    words = [tokenizer.id_to_word[i % tokenizer.vocab_size] for i in range(REAL.vocab_size)]
    vocab = {w if i < tokenizer.vocab_size else f"w{i}": i for i, w in enumerate(words)}
    big = WordTokenizer.from_json(tokenizer.to_json().replace(
        json_vocab(tokenizer), json.dumps(vocab, separators=(",", ":"))))
    model = torch_model(REAL, seed=4, spread=0.5)
    ours, reference = Predictor(as_numpy(model), big), Predictor(model, big)
    for text in ["", "how are y", "See you at the ", "i think so, but "] + messages[:20]:
        assert ours.suggest(text, k=5) == reference.suggest(text, k=5)
        assert np.abs(ours.next_word_scores(text) - reference.next_word_scores(text)).max() < 1e-5
    seqs = big.encode_messages(messages[:30])
    mine = dict(NumpyScorer(as_numpy(model)).score_messages(seqs))
    for i, logp in LSTMScorer(model).score_messages(seqs):
        assert np.abs(mine[i] - logp).max() < 1e-5


def json_vocab(tokenizer: WordTokenizer) -> str:
    return json.dumps(json.loads(tokenizer.to_json())["model"]["vocab"], separators=(",", ":"),
                      ensure_ascii=False)


# --------------------------------------------------------------------------- the device's round
def test_the_devices_round_matches_a_torch_round(tokenizer, messages):
    from conftest import device_task
    from keyboard_app.local_training import run_task, sample_messages, train_config
    config = ModelConfig(vocab_size=tokenizer.vocab_size, dropout=0.1, **SMALL)
    start = torch_model(config, seed=6)
    blob = model_to_bytes(start, CheckpointMeta(config, tokenizer.sha256, 2))
    task = device_task(round_id=1, model_version=2, clip_norm=1e6,
                       train={"lr": 3e-3, "optimizer": "adam", "max_examples": 120})
    local = run_task(task, blob, DeviceTokenizer.from_json(tokenizer.to_json()), messages[:300],
                     noise_stddev=0.0, seed=9)
    config_t = train_config(task.train, seed=9)
    sample = sample_messages(messages[:300], 120, config_t.seed)
    reference, _ = model_from_bytes(blob)
    reference.drop = NumpyMasks(Dropout(config.dropout, dropout_rng(config_t.seed)))
    torch_train(reference, tokenizer.encode_messages(sample), config_t, progress=False)
    names = sorted(local.update.tensors)
    ref = np.concatenate([(reference.state_dict()[k].numpy()
                           - start.state_dict()[k].numpy()).ravel() for k in names])
    ours = np.concatenate([local.update.tensors[k].ravel() for k in names])
    assert relative(ours, ref) < 1e-4 and local.result.steps == 8
