"""The shared noise sizing and composition of `federated.privacy` (device and server use it)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from federated import privacy


def test_honest_reports_rounds_up_the_honest_share() -> None:
    assert privacy.honest_reports(3, 1 / 3) == 2
    assert privacy.honest_reports(20, 1 / 3) == 14
    assert privacy.honest_reports(20, 0.0) == 20
    assert privacy.honest_reports(1, 0.5) == 1
    with pytest.raises(ValueError):
        privacy.honest_reports(0)
    with pytest.raises(ValueError):
        privacy.honest_reports(5, 1.0)


def test_honest_reports_alone_carry_the_full_noise_in_a_secure_round() -> None:
    clip, z, m = 0.5, 1.2, 20
    stddev = privacy.device_noise_stddev(clip, z, m, secure=True)
    honest = privacy.honest_reports(m)
    assert math.isclose(stddev * math.sqrt(honest), z * clip)
    assert math.isclose(privacy.visible_noise_multiplier(stddev, clip, m, secure=True), z)


def test_a_plain_round_device_adds_the_full_noise_itself() -> None:
    stddev = privacy.device_noise_stddev(0.5, 1.2, 20, secure=False)
    assert math.isclose(stddev, 0.6)
    assert math.isclose(privacy.visible_noise_multiplier(stddev, 0.5, 20, secure=False), 1.2)
    # the old sizing z*C/sqrt(m) seen per update is only z/sqrt(m) against the server
    old = privacy.noise_stddev(0.5, 1.2, 20)
    assert math.isclose(privacy.visible_noise_multiplier(old, 0.5, 20, secure=False),
                        1.2 / math.sqrt(20))


def test_composed_epsilon_matches_the_self_composed_accountant() -> None:
    assert math.isclose(privacy.composed_epsilon([1.0] * 4, 1e-5),
                        privacy.epsilon(1.0, 4, 1e-5), rel_tol=1e-9)
    mixed = privacy.composed_epsilon([1.0, 2.0], 1e-5)
    assert privacy.composed_epsilon([2.0, 2.0], 1e-5) < mixed < privacy.composed_epsilon(
        [1.0, 1.0], 1e-5)
    assert privacy.composed_epsilon([], 1e-5) == 0.0
    assert privacy.composed_epsilon([1.0, 0.0], 1e-5) == math.inf


def test_the_demo_plain_round_figure_against_the_server() -> None:
    """Issue 12: the demo's 'epsilon 10.73' was about 81 against the server."""
    per_update = privacy.visible_noise_multiplier(
        privacy.noise_stddev(1.0, 1.0, 20), 1.0, 20, secure=False)
    assert 80 < privacy.composed_epsilon([per_update] * 4, 1e-5) < 82
    assert np.isclose(privacy.composed_epsilon([1.0] * 4, 1e-5), 10.7255, atol=1e-3)


def test_a_noise_multiplier_too_small_for_floating_point_has_no_guarantee():
    """dp-accounting divides by zero for z near 1e-160 (found by schemathesis through the
    config endpoint): the answer is no guarantee, not a server error."""
    assert privacy.epsilon(1e-160, 3, 1e-6) == math.inf
    assert privacy.epsilon(1e-160, 1, 1e-6, sampling_rate=0.1, rounds=5) == math.inf
    assert privacy.composed_epsilon([1e-160, 1.0], 1e-6) == math.inf
    assert math.isfinite(privacy.epsilon(1.0, 3, 1e-6))
