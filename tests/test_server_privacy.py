"""The privacy figures the server reports, checked against dp-accounting called directly."""
from __future__ import annotations

import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant


def direct_epsilon(events: list[dp_event.DpEvent], delta: float) -> float:
    accountant = RdpAccountant()
    for event in events:
        accountant.compose(event)
    return accountant.get_epsilon(delta)


def gaussian(z: float, count: int) -> list[dp_event.DpEvent]:
    return [dp_event.GaussianDpEvent(z)] * count


def _one_round(server, devices):
    tasks = [server.task(d) for d in devices]
    for i, (d, t) in enumerate(zip(devices, tasks)):
        assert server.upload(d, t["round_id"], server.update_bytes(t, seed=i)).status_code == 202


def test_per_device_epsilon_matches_dp_accounting(start_server):
    z, delta = 1.3, 1e-5
    server = start_server(round={"noise_multiplier": z, "delta": delta, "target_reports": 1,
                                 "min_reports": 1, "participation_cap": 3,
                                 "epsilon_budget": 50.0})
    a, b = server.enrol(), server.enrol()
    _one_round(server, [a])
    _one_round(server, [a])
    _one_round(server, [b])
    st = server.status()
    p = st["privacy"]
    assert p["epsilon_spent_max"] == pytest.approx(direct_epsilon(gaussian(z, 2), delta),
                                                   rel=1e-9)
    assert p["epsilon_at_cap"] == pytest.approx(direct_epsilon(gaussian(z, 3), delta), rel=1e-9)
    assert [r["epsilon_max"] for r in st["rounds"] if r["state"] == "closed"] == pytest.approx(
        [direct_epsilon(gaussian(z, n), delta) for n in (1, 2, 2)], rel=1e-9)
    assert st["devices"]["participations"] == {"2": 1, "1": 1}
    assert p["delta"] == delta and p["noise_multiplier"] == z
    # the task carries z; in a plain round the device adds the full z * C itself
    assert server.checkin(server.enrol())["task"]["noise_multiplier"] == z


def test_varying_noise_is_composed_as_it_was(start_server):
    server = start_server(round={"noise_multiplier": 2.0, "target_reports": 1, "min_reports": 1,
                                 "participation_cap": 3, "epsilon_budget": None})
    device = server.enrol()
    _one_round(server, [device])  # round 1 at z=2
    assert server.set_config(noise_multiplier=1.0).status_code == 200
    _one_round(server, [server.enrol()])  # round 2 still at z=2 (opened before the change)
    _one_round(server, [device])  # round 3 at z=1
    spent = server.status()["privacy"]["epsilon_spent_max"]
    exact = direct_epsilon([dp_event.GaussianDpEvent(2.0), dp_event.GaussianDpEvent(1.0)], 1e-6)
    assert spent == pytest.approx(exact, rel=1e-9)  # no longer "the smallest z for all"
    assert spent < direct_epsilon(gaussian(1.0, 2), 1e-6)


def test_poisson_sampling_assumption(start_server):
    z, q = 1.1, 0.05
    server = start_server(round={"noise_multiplier": z, "sampling_rate": q, "target_reports": 1,
                                 "min_reports": 1, "epsilon_budget": 30.0})
    _one_round(server, [server.enrol()])
    _one_round(server, [server.enrol()])
    p = server.status()["privacy"]
    sampled = [dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z))]
    assert p["epsilon_spent_max"] == pytest.approx(direct_epsilon(sampled * 2, 1e-6), rel=1e-9)
    assert p["epsilon_at_cap"] == pytest.approx(direct_epsilon(sampled * 3, 1e-6), rel=1e-9)
    assert any("NOT enforced" in a for a in p["assumptions"])


def test_budget_refusal_figure_matches_dp_accounting(start_server):
    server = start_server(round={"noise_multiplier": 0.8, "participation_cap": 5,
                                 "epsilon_budget": 10.0})
    expected = direct_epsilon(gaussian(0.8, 5), 1e-6)
    assert expected > 10.0
    assert f"epsilon {expected:.3f}" in server.status()["blocked_reason"]
