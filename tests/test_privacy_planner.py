"""The planner of `privacy_audit.planner`: its epsilon is dp-accounting's, its errors are
sentences, and its inverse answers are consistent with its forward ones."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant

from federated import privacy
from privacy_audit import planner, tolerance
from privacy_audit.planner import PlanError, Setting

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def _rdp(event: dp_event.DpEvent, delta: float) -> float:
    return RdpAccountant().compose(event).get_epsilon(delta)


def test_the_noise_multiplier_gives_the_target_epsilon_by_dp_accounting() -> None:
    s = Setting(population=100_000, cohort=1_000, rounds=30, delta=1e-6, target_epsilon=2.0,
                clip_norm=0.5)
    plan = planner.plan(s)
    plain, sampled = plan.options
    assert s.cap == 1  # 30 rounds of 1,000 fit in 100,000 devices joining once each
    eps = _rdp(dp_event.SelfComposedDpEvent(
        dp_event.GaussianDpEvent(plain.noise_multiplier), 1), 1e-6)
    assert eps == pytest.approx(plain.epsilon_against_server, rel=1e-12)
    assert 2.0 - 1e-4 < eps <= 2.0
    # slightly less noise would miss the target: z is the smallest that meets it
    assert _rdp(dp_event.GaussianDpEvent(plain.noise_multiplier * 0.999), 1e-6) > 2.0
    eps_sampled = _rdp(dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(
        0.01, dp_event.GaussianDpEvent(sampled.noise_multiplier)), 30), 1e-6)
    assert 2.0 - 1e-4 < eps_sampled <= 2.0
    assert sampled.noise_multiplier < plain.noise_multiplier
    assert "trusted party" in sampled.note


def test_secure_rounds_size_noise_for_the_dishonest_share() -> None:
    s = Setting(10_000, 100, 20, 1e-6, 4.0, clip_norm=2.0, participation_cap=5)
    option = planner.plan(s).options[0]
    z, h = option.noise_multiplier, privacy.honest_reports(100)
    assert h == 67
    assert option.device_noise_stddev == pytest.approx(z * 2.0 / math.sqrt(h))
    assert option.sigma_sum_guaranteed == pytest.approx(z * 2.0)
    assert option.sigma_mean == pytest.approx(z * 2.0 * math.sqrt(100 / h) / 100)
    # against the server and against model users both are the sum's
    assert option.epsilon_against_model_users == pytest.approx(option.epsilon_against_server)
    assert option.epsilon_against_server == pytest.approx(
        privacy.composed_epsilon([z] * 5, 1e-6), rel=1e-9)


def test_plain_rounds_protect_model_users_more_than_the_server() -> None:
    s = Setting(10_000, 100, 20, 1e-6, 4.0, clip_norm=1.0, secure=False)
    option = planner.plan(s).options[0]
    assert option.device_noise_stddev == pytest.approx(option.noise_multiplier)
    assert option.sigma_mean == pytest.approx(option.noise_multiplier / 10)
    assert option.epsilon_against_model_users < option.epsilon_against_server


def test_expected_loss_interpolates_measured_runs_and_says_when_it_cannot() -> None:
    runs = tolerance.RUNS
    first, last = min(runs, key=lambda r: r.sigma_mean), max(runs, key=lambda r: r.sigma_mean)
    assert tolerance.expected_loss(first.sigma_mean).points == pytest.approx(first.top1_loss)
    assert tolerance.expected_loss(first.sigma_mean / 10).kind == "below"
    assert tolerance.expected_loss(last.sigma_mean * 10).kind == "above"
    mid = tolerance.expected_loss(math.sqrt(first.sigma_mean * last.sigma_mean))
    assert mid.kind == "interpolated" and first.top1_loss < mid.points < last.top1_loss
    sigma = tolerance.tolerated_sigma(1.0)
    assert tolerance.expected_loss(sigma).points == pytest.approx(1.0)


def test_the_inverse_answer_meets_the_target_when_planned_forward() -> None:
    result = planner.inverse(target_epsilon=4.0, max_loss=1.0, rounds=30, delta=1e-7,
                             clip_norm=0.5, zs=(2.0, 5.0))
    best = result["best_without_amplification"]
    assert best is not None
    s = Setting(best["population_without_amplification"], best["cohort"], 30, 1e-7, 4.0,
                clip_norm=0.5, participation_cap=best["cap_without_amplification"])
    option = planner.plan(s).options[0]
    assert option.noise_multiplier <= best["noise_multiplier"] + 1e-6
    assert option.sigma_mean <= result["sigma_mean_tolerated"] * (1 + 1e-9)
    assert option.expected_top1_loss <= 1.0 + 1e-9


@pytest.mark.parametrize("kwargs, words", [
    ({"population": 10, "cohort": 20}, "cannot be larger than the population"),
    ({"delta": 0.0}, "delta must be between 0 and 1"),
    ({"target_epsilon": -1.0}, "target epsilon must be a positive number"),
    ({"rounds": 0}, "rounds must be at least 1"),
    ({"participation_cap": 1, "population": 1000}, "raise the cap or the population"),
    ({"dishonest_share": 1.0}, "dishonest share must be in [0, 1)"),
])
def test_bad_settings_are_refused_with_a_sentence(kwargs: dict, words: str) -> None:
    base = {"population": 10_000, "cohort": 100, "rounds": 30, "delta": 1e-6,
            "target_epsilon": 2.0}
    with pytest.raises(PlanError, match=__import__("re").escape(words)):
        Setting(**(base | kwargs))


def test_the_command_answers_and_refuses_in_plain_words() -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "privacy_audit.planner", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    ok = run("--population", "100000", "--cohort", "1000", "--rounds", "30", "--delta",
             "1e-6", "--target-epsilon", "10", "--json")
    assert ok.returncode == 0, ok.stderr
    options = json.loads(ok.stdout)["options"]
    assert [o["accounting"] for o in options] == ["no amplification",
                                                 "Poisson sampling (amplified)"]
    assert all(o["epsilon_against_server"] <= 10.0 for o in options)
    bad = run("--rounds", "30", "--delta", "1e-6", "--target-epsilon", "10")
    assert bad.returncode == 2 and bad.stderr.startswith("error: give --population")
    loss = run("--rounds", "30", "--delta", "1e-6", "--target-epsilon", "2", "--max-loss",
               "0.001")
    assert loss.returncode == 2 and "no measured run lost less than" in loss.stderr
    assert "Traceback" not in bad.stderr + loss.stderr
