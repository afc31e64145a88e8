"""The canary audit of `privacy_audit.canaries` on a tiny model, in seconds: it sees a
repeated canary memorised without clipping or noise (the control), and less with noise."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from data import load_split
from federated.privacy import privatize
from model.config import ModelConfig
from model.lstm import NextWordLSTM
from model.predictor import Predictor
from model.tokenizer import WordTokenizer
from model.train import TrainConfig, train
from privacy_audit import canaries as audit

FILLINGS = 2000


@pytest.fixture(scope="module")
def setting() -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    messages = [m for d in load_split("public")[:20] for m in d.messages][:400]
    tokenizer = WordTokenizer.build(messages + [audit.PREFIX], vocab_size=300)
    candidates = audit.candidate_words(tokenizer, skip=20)
    canaries = audit.make_canaries(candidates, [("inserted-20", 20, ["me"])], held_out=6,
                                   length=2, rng=np.random.default_rng(1))
    model = NextWordLSTM(ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=32,
                                     hidden_size=64, dropout=0.0))
    history = messages + audit.insertions(canaries)["me"]
    start = copy.deepcopy(model)
    train(model, tokenizer.encode_messages(history),
          TrainConfig(epochs=8, batch_size=16, lr=1e-2, optimizer="adam", threads=1),
          pad_id=tokenizer.pad_id, progress=False)
    return {"tokenizer": tokenizer, "candidates": candidates, "canaries": canaries,
            "start": start, "trained": model}


def _exposures(model: NextWordLSTM, s: dict) -> dict[str, float]:
    found = audit.exposures(model, s["tokenizer"], s["canaries"], s["candidates"], FILLINGS,
                            np.random.default_rng(2))
    return {e.name: e.exposure for e in found}


def _noised(s: dict, clip_norm: float, stddev: float) -> NextWordLSTM:
    """The start model plus the trained delta clipped and noised as a device does."""
    start = s["start"].state_dict()
    delta = {k: (v - start[k]).numpy() for k, v in s["trained"].state_dict().items()}
    private, _ = privatize(delta, clip_norm, stddev, np.random.default_rng(3))
    model = copy.deepcopy(s["start"])
    model.load_state_dict({k: start[k] + torch.from_numpy(private[k]) for k in start})
    return model


def test_the_control_memorises_the_repeated_canary(setting: dict) -> None:
    exposure = _exposures(setting["trained"], setting)
    held_out = [v for k, v in exposure.items() if k.startswith("held-out")]
    cap = np.log2(FILLINGS + 1)
    assert exposure["inserted-20"] > cap - 2, exposure  # ranked among the top 4 of 2001
    assert exposure["inserted-20"] > max(held_out) + 3, exposure
    assert np.mean(held_out) < 4.0, exposure  # never-inserted canaries look like chance
    assert max(_exposures(setting["start"], setting).values()) < cap - 2


def test_noise_lowers_the_exposure(setting: dict) -> None:
    control = _exposures(setting["trained"], setting)["inserted-20"]
    delta_norm = float(np.sqrt(sum(
        ((v - setting["start"].state_dict()[k]) ** 2).sum().item()
        for k, v in setting["trained"].state_dict().items())))
    clipped = _exposures(_noised(setting, delta_norm, 0.0), setting)["inserted-20"]
    assert clipped == pytest.approx(control, abs=0.5)  # clipping at its own norm: no change
    noised = _exposures(_noised(setting, delta_norm, delta_norm / 10), setting)["inserted-20"]
    assert noised < control - 3, (control, noised)


def test_the_suggestion_strip_shows_the_memorised_secret(setting: dict) -> None:
    canary = setting["canaries"][0]
    trained = audit.suggestion_check(Predictor(setting["trained"], setting["tokenizer"]), canary)
    start = audit.suggestion_check(Predictor(setting["start"], setting["tokenizer"]), canary)
    assert trained["first_word_suggested"] and trained["words_suggested"] >= 1
    assert start["words_suggested"] == 0 and not start["first_word_suggested"]


def test_canaries_are_spread_over_their_devices_and_checked() -> None:
    words = [f"w{i}" for i in range(50)]
    made = audit.make_canaries(words, [("a", 5, ["x", "y"]), ("b", 1, ["y"])], held_out=2,
                               length=3, rng=np.random.default_rng(0))
    assert len({c.secret for c in made}) == 4
    placed = audit.insertions(made)
    assert [len(placed["x"]), len(placed["y"])] == [3, 3]
    assert placed["x"][0].startswith(audit.PREFIX + " ")
    with pytest.raises(ValueError, match="has copies but no device"):
        audit.insertions([audit.Canary("c", ("w1",), copies=2)])
