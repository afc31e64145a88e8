"""Tokenizer, checkpoints and the training loop."""
import math

import pytest
import torch

from data import load_split
from model.checkpoint import (CheckpointError, CheckpointMeta, load_checkpoint, model_to_bytes,
                              save_checkpoint)
from model.config import ModelConfig
from model.lstm import NextWordLSTM
from model.schedule import lr_factor
from model.tokenizer import TokenizerError, WordTokenizer
from model.train import TrainConfig, mean_loss, train
from model.words import words

torch.set_num_threads(1)
TINY = dict(embed_dim=16, hidden_size=32, dropout=0.0)


@pytest.fixture(scope="module")
def messages():
    return [m for d in load_split("public")[:40] for m in d.messages][:1500]


@pytest.fixture(scope="module")
def tokenizer(messages):
    return WordTokenizer.build(messages, vocab_size=500)


def test_default_model_is_gboard_sized():
    model = NextWordLSTM(ModelConfig())
    assert 1.4e6 < model.num_parameters() < 1.6e6
    assert model.output_bias.shape == (10_004,)


def test_tokenizer_matches_scoring_words_and_round_trips(tokenizer, tmp_path):
    text = "Hello, I'm HERE!! 'quoted' don't 12 café 🙂"
    ids = tokenizer.encode(text)
    assert len(ids) == len(words(text))
    known = [w for w in words(text) if w in tokenizer.word_to_id]
    assert [tokenizer.id_to_word[i] for i in ids if i != tokenizer.unk_id] == known
    assert tokenizer.encode_message(text)[0] == tokenizer.bos_id
    assert tokenizer.encode_message(text)[-1] == tokenizer.eos_id
    tokenizer.save(tmp_path / "tokenizer.json")
    again = WordTokenizer.load(tmp_path / "tokenizer.json")
    assert again.sha256 == tokenizer.sha256 and again.encode(text) == ids
    assert tokenizer.vocab_size == 504
    assert tokenizer.id_to_word[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]


def test_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="file not found"):
        WordTokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a tokenizer.json"):
        WordTokenizer.load(tmp_path / "bad.json")


def _tiny(tokenizer, **over):
    torch.manual_seed(0)
    return NextWordLSTM(ModelConfig(vocab_size=tokenizer.vocab_size, **{**TINY, **over}))


def test_checkpoint_round_trip(tokenizer, tmp_path):
    model = _tiny(tokenizer)
    meta = CheckpointMeta(model.config, tokenizer.sha256, 3, {"data": "public"})
    save_checkpoint(tmp_path / "m.safetensors", model, meta)
    loaded, loaded_meta = load_checkpoint(tmp_path / "m.safetensors", tokenizer.sha256, model.config)
    assert loaded_meta == meta
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_every_corrupt_checkpoint_error(tokenizer, tmp_path):
    model = _tiny(tokenizer)
    meta = CheckpointMeta(model.config, tokenizer.sha256, 1, {})
    data = model_to_bytes(model, meta)
    path = tmp_path / "c.safetensors"

    def load(content: bytes, **kw):
        path.write_bytes(content)
        return load_checkpoint(path, **kw)

    with pytest.raises(CheckpointError, match="file not found"):
        load_checkpoint(tmp_path / "none.safetensors")
    with pytest.raises(CheckpointError, match="truncated"):
        load(data[:4])
    with pytest.raises(CheckpointError, match="truncated"):
        load(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="not the loaded tokenizer"):
        load(data, tokenizer_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="architecture"):
        load(data, config=ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=16, hidden_size=64))
    bad = _tiny(tokenizer)
    with torch.no_grad():
        bad.lstm.weight_hh_l0[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        load(model_to_bytes(bad, meta))
    other = _tiny(tokenizer, hidden_size=64)  # metadata says 32, weights are 64 wide
    lying = model_to_bytes(other, meta)
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        load(lying)
    with pytest.raises(CheckpointError, match="not a private-keyboard"):
        from safetensors.torch import save
        load(save({"x": torch.zeros(2)}))
    assert str(path) in str(pytest.raises(CheckpointError, load, data[:10]).value)


def test_training_is_deterministic_and_loss_falls(tokenizer, messages):
    sequences = tokenizer.encode_messages(messages)
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=7)
    first, second = _tiny(tokenizer), _tiny(tokenizer)
    before = mean_loss(first, sequences)
    r1 = train(first, sequences, config, progress=False)
    r2 = train(second, sequences, config, progress=False)
    assert r1.epoch_losses == r2.epoch_losses
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)
    after = mean_loss(first, sequences)
    assert after < before - 1.0
    assert r1.epoch_losses[1] < r1.epoch_losses[0]
    assert math.isfinite(r1.mean_loss) and r1.tokens > 0


def test_training_stops_promptly(tokenizer, messages):
    sequences = tokenizer.encode_messages(messages)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 3

    result = train(_tiny(tokenizer), sequences, TrainConfig(epochs=5, batch_size=8), should_stop=should_stop,
                   progress=False)
    assert result.stopped and result.steps == 3


def test_cosine_schedule_falls_from_one_to_zero_and_stays():
    assert [lr_factor("cosine", s, 4) for s in (0, 2, 4, 9)] == pytest.approx([1, 0.5, 0, 0])
    assert lr_factor("constant", 7, 4) == 1.0
    with pytest.raises(ValueError, match="schedule 'step' not in"):
        lr_factor("step", 0, 4)


def test_train_config_is_validated():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(lr=0)
