"""Local training and the update: delta = local - global, clipping to C, Gaussian noise."""
import math

import numpy as np
import pytest
import torch

from device_model.checkpoint import weights_from_bytes
from device_model.lstm import NumpyLSTM
from device_model.train import train
from federated.privacy import clip
from conftest import device_task, task_json
from federated.protocol import Task
from federated.wire import WireError, decode_update, l2_norm, tensors_from_bytes
from keyboard_app.local_training import make_update, run_task, sample_messages, train_config
from model.checkpoint import CheckpointMeta, model_to_bytes
from model.config import ModelConfig
from model.lstm import NextWordLSTM
from model.tokenizer import WordTokenizer

TEXT = ["how are you doing today", "i am doing fine thanks", "what are you up to",
        "see you later tonight", "are you coming to the party", "i think so yes",
        "that sounds like fun", "see you at the party then"]


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = WordTokenizer.build(TEXT, vocab_size=100)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=16, hidden_size=32)
    blob = model_to_bytes(NextWordLSTM(config), CheckpointMeta(config, tokenizer.sha256, 3))
    return tokenizer, blob


def task(**changes) -> Task:
    train = {"epochs": 2.0, "batch_size": 4, **changes.pop("train", {})}
    return device_task(round_id=7, model_version=3, train=train, **changes)


def test_update_is_local_minus_global_clipped(setup):
    tokenizer, blob = setup
    local = run_task(task(clip_norm=1e6, noise_multiplier=0.0), blob, tokenizer, TEXT,
                     noise_stddev=0.0, seed=1)
    # the same training by hand on the device's NumPy runtime (tests/test_device_model.py
    # holds it to PyTorch's): the delta must be exactly trained - global
    weights, meta = weights_from_bytes(blob)
    model = NumpyLSTM(weights, meta.config)
    train(model, tokenizer.encode_messages(TEXT), train_config(task().train, seed=1))
    global_tensors, _ = tensors_from_bytes(blob)
    for name, value in model.weights.items():
        expected = value - global_tensors[name]
        np.testing.assert_array_equal(local.update.tensors[name], expected.astype(np.float32))
    assert local.prenorm == pytest.approx(l2_norm(local.update.tensors), rel=1e-5)
    assert local.prenorm > 0
    shapes = {k: v.shape for k, v in global_tensors.items()}
    decoded = decode_update(local.body, shapes)
    assert (decoded.round_id, decoded.model_version, decoded.num_examples) == (7, 3, len(TEXT))
    assert decoded.metrics == {}  # nothing about the local loss leaves the device


def test_max_examples_trains_on_a_seeded_sample(setup):
    tokenizer, blob = setup
    local = run_task(task(train={"max_examples": 3}, noise_multiplier=0.0), blob, tokenizer,
                     TEXT, noise_stddev=0.0, seed=1)
    assert local.update.num_examples == 3
    history = [f"message number {i}" for i in range(50)]
    samples = [sample_messages(history, 10, seed) for seed in range(20)]
    assert all(len(s) == 10 and s == sorted(s, key=history.index) for s in samples)
    assert sample_messages(history, 10, 3) == samples[3]  # reproducible from the seed
    seen = {m for s in samples for m in s}
    assert len(seen) > 40  # over rounds the whole history gets used, not only the end
    assert sample_messages(history, 60, 0) == history


def test_interrupted_training_sends_nothing(setup):
    tokenizer, blob = setup
    polls = []
    stop = lambda: polls.append(1) or len(polls) > 2  # noqa: E731
    assert run_task(task(), blob, tokenizer, TEXT, noise_stddev=0.0, should_stop=stop) is None
    assert len(polls) == 3
    assert run_task(task(), blob, tokenizer, ["!!!", "..."], noise_stddev=0.0) is None  # no words


def test_a_task_the_device_cannot_carry_out_is_not_parsed():
    """Bad train parameters or privacy terms: `Task.from_json` refuses the task, naming the
    field, so nothing is ever trained on it."""
    without_batch = task_json()
    del without_batch["train"]["batch_size"]
    for bad, why in ((task_json(train={"optimizer": "lbfgs"}), "'optimizer' must be one of"),
                     (without_batch, "task 'train' lacks 'batch_size'"),
                     (task_json(clip_norm=0.0), "'clip_norm' must be a finite number in \\(0"),
                     (task_json(clip_norm=float("nan")), "clip_norm"),
                     (task_json(secure_aggregation=True), "task lacks 'secagg'"),
                     (task_json(train={"max_examples": -5}), "max_examples"),
                     ({"round_id": 1}, "task lacks 'secure_aggregation'")):
        with pytest.raises(WireError, match=why):
            Task.from_json(bad)


def test_clipped_norm_is_never_above_c():
    rng = np.random.default_rng(0)
    shapes = {"a": (40, 16), "b": (64,), "c": (3, 5, 7)}
    for scale in (1e-6, 1e-2, 0.5, 1.0, 3.0, 1e3, 1e8):
        for clip_norm in (0.01, 0.5, 1.0, 7.0):
            for _ in range(20):
                delta = {k: (rng.standard_normal(s) * scale).astype(np.float32)
                         for k, s in shapes.items()}
                update, prenorm = make_update(delta, task(clip_norm=clip_norm), 5, 0.0)
                assert l2_norm(update.tensors) <= clip_norm
                assert prenorm == pytest.approx(l2_norm(delta), rel=1e-5)
                if prenorm <= clip_norm:  # short updates pass unchanged
                    for k in delta:
                        np.testing.assert_array_equal(update.tensors[k], delta[k])
                else:  # long ones keep their direction
                    for k in delta:
                        np.testing.assert_allclose(update.tensors[k] * prenorm / clip_norm,
                                                   delta[k], rtol=1e-4, atol=1e-6 * scale)


def test_noise_has_the_given_scale():
    """Over many draws the added noise is N(0, sigma^2) per coordinate, independent."""
    sigma, n_draws, dim = 0.3, 300, 1000
    delta = {"w": np.full((dim,), 0.01, np.float32)}  # norm 0.32 < C: clipping is a no-op
    clipped, _ = clip(delta, 1.0)
    noise = np.stack([make_update(delta, task(), 1, sigma)[0].tensors["w"]
                      - clipped["w"] for _ in range(n_draws)]).astype(np.float64)
    n = noise.size
    assert abs(noise.mean()) < 6 * sigma / math.sqrt(n)
    assert noise.std() / sigma == pytest.approx(1.0, abs=6 * math.sqrt(1 / (2 * n)))
    within = np.mean(np.abs(noise) < sigma)  # 68.27% of a Gaussian within one sigma
    assert within == pytest.approx(0.6827, abs=6 * math.sqrt(0.6827 * 0.3173 / n))
    corr = np.corrcoef(noise[:-1].ravel(), noise[1:].ravel())[0, 1]  # fresh draws each time
    assert abs(corr) < 6 / math.sqrt(n)


def test_seeded_rng_makes_the_noise_reproducible():
    delta = {"w": np.ones((50,), np.float32)}
    first, _ = make_update(delta, task(), 1, 0.1, np.random.default_rng(5))
    again, _ = make_update(delta, task(), 1, 0.1, np.random.default_rng(5))
    other, _ = make_update(delta, task(), 1, 0.1)
    np.testing.assert_array_equal(first.tensors["w"], again.tensors["w"])
    assert not np.array_equal(first.tensors["w"], other.tensors["w"])


def test_with_noise_the_upload_does_not_say_how_much_the_person_typed(setup):
    """A DP round's upload carries 1 as its message count (the server weights reports alike
    then); a round without noise carries the true count (the server may weight by it)."""
    tokenizer, blob = setup
    noised = run_task(task(noise_multiplier=1.0), blob, tokenizer, TEXT, noise_stddev=0.01,
                      seed=1)
    plain = run_task(task(noise_multiplier=0.0), blob, tokenizer, TEXT, noise_stddev=0.0,
                     seed=1)
    assert len(TEXT) > 1
    assert noised.update.num_examples == 1 and plain.update.num_examples == len(TEXT)
