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


# --- the one-run empirical epsilon (Andrew et al. 2024) -----------------------------------------
def test_gaussian_epsilon_matches_dp_accounting_for_equal_variances() -> None:
    from dp_accounting.pld import privacy_loss_distribution as pld

    from privacy_audit.empirical import gaussian_epsilon
    for mu in (0.5, 2.0):
        expected = pld.from_gaussian_mechanism(1.0 / mu, value_discretization_interval=1e-4
                                               ).get_epsilon_for_delta(1e-5)
        found = gaussian_epsilon(0.0, 0.3, 0.3 * mu, 0.3, 1e-5)
        assert found == pytest.approx(expected, rel=2e-3)
    assert gaussian_epsilon(1.0, 0.2, 1.0, 0.2, 1e-5) == 0.0


def test_inserted_directions_stand_out_in_the_model_delta_unless_noise_hides_them() -> None:
    from privacy_audit.empirical import cosines, direction, empirical_epsilon
    shapes = {"a": (3000,), "b": (40, 50)}
    inserted, held_out = list(range(10)), list(range(100, 160))
    rng = np.random.default_rng(0)

    def estimate(noise: float) -> dict:
        delta = {k: rng.normal(0, noise, s) for k, s in shapes.items()}
        for seed in inserted:
            for k, v in direction(seed, shapes, norm=1.0).items():
                delta[k] = delta[k] + v
        return empirical_epsilon(cosines(delta, inserted), cosines(delta, held_out), 1e-5,
                                 dim=3000 + 40 * 50)
    assert np.linalg.norm(np.concatenate([v.ravel() for v in direction(3, shapes, 2.0).values()])
                          ) == pytest.approx(2.0, rel=1e-5)
    clear, hidden = estimate(0.01), estimate(1.0)
    assert clear["inserted_mean"] > 0.2 and abs(clear["held_out_mean"]) < 0.01
    assert clear["epsilon"] > 20 and clear["epsilon_mean_shift"] > 20
    assert hidden["epsilon_mean_shift"] < clear["epsilon_mean_shift"] / 4
    assert abs(hidden["held_out_std"] / hidden["null_std"] - 1) < 0.25  # the null holds


# --- the fleet's hooks: canary messages in histories, random-direction canary devices -----------
def test_canary_messages_join_histories_in_time_order() -> None:
    from data import Device
    from fleet import FleetError
    from fleet.population import with_audit_devices
    devices = [Device("a", "federated", ["x", "y", "z"], [1.0, 2.0, 3.0]),
               Device("b", "federated", ["w"], [5.0])]
    out = with_audit_devices(devices, {"a": ["secret", "secret"]}, [7], seed=0)
    assert [d.sender for d in out] == ["a", "b", "direction-canary-7"]
    assert sorted(out[0].messages) == sorted(["x", "y", "z", "secret", "secret"])
    assert out[0].timestamps == sorted(out[0].timestamps)
    assert out[1] is devices[1] and devices[0].messages == ["x", "y", "z"]
    with pytest.raises(FleetError, match="not in the population"):
        with_audit_devices(devices, {"nobody": ["secret"]}, [], seed=0)


def test_direction_canaries_go_through_the_real_fleet_and_stand_out(tiny_model, tmp_path
                                                                    ) -> None:
    """Real server process, real device runtimes in two workers: two direction canaries
    take part in both rounds; the final model delta points their way, not elsewhere."""
    import json

    from federated.wire import tensors_from_bytes
    from fleet.config import FleetConfig
    from fleet.run import run_fleet
    from privacy_audit.empirical import cosines
    senders = [d.sender for d in load_split("federated") if 20 <= len(d.messages) <= 60][:4]
    config = FleetConfig(rounds=2, devices_per_round=6, max_examples=40, batch_size=8,
                         client_lr=0.5, server_optimizer="fedavg", clip_norm=1.0,
                         weighting="uniform", eval_every=0, final_eval=False, workers=2, seed=1,
                         secure_aggregation=False)
    run_dir = tmp_path / "run"
    run_fleet(config, run_dir, init_model=tiny_model["checkpoint"],
              tokenizer=tiny_model["tokenizer"], senders=senders, progress=False,
              extra_messages={senders[0]: [audit.PREFIX + " alpha beta"] * 3},
              direction_seeds=[0, 1])
    population = json.loads((run_dir / "population.json").read_text())
    assert population[-2:] == ["direction-canary-0", "direction-canary-1"]
    for index in (4, 5):
        state = json.loads((run_dir / "devices" / f"{index:04d}" / "state.json").read_text())
        assert state["rounds_joined"] == 2
    final, _ = tensors_from_bytes((run_dir / "model.safetensors").read_bytes())
    delta = {k: final[k] - tiny_model["weights"][k] for k in final}
    inserted, held_out = cosines(delta, [0, 1]), cosines(delta, range(100, 120))
    assert inserted.min() > 0.05 > np.abs(held_out).max(), (inserted, held_out)
