"""Attacks on secure rounds, replayed against a real server over HTTP; each now fails.

One test per attack, named after it. Where the attacker is the server itself, the test
runs a real server and plays the malicious part in between: it changes what the server
hands to a device (a task, a relay) before the device's own code sees it.
"""
from __future__ import annotations

import pytest

from aggregation_server.config import ConfigError, RoundConfig, load_settings
from federated.secagg import RefusedRequest, SecAggClient
from federated.secagg import RoundConfig as ProtocolConfig
from federated.secagg.params import hiding_problem
from test_secure_rounds import secure_round, stored


def test_threshold_1_lets_the_server_recover_one_input(start_server):
    """A server that hands out t = 1 needs one share of each secret: the device's own seed
    share and any neighbour's key share give it the input. The device now refuses such a
    task before it sends anything, and the server's own configs never make one."""
    server = start_server(round=secure_round(4, 3))
    device = server.enrol()
    task = server.task(device)
    honest = ProtocolConfig.from_dict(task["secagg"]["config"])
    assert hiding_problem(honest.num_clients, honest.degree, honest.threshold) is None
    forged = ProtocolConfig.from_dict(task["secagg"]["config"] | {"threshold": 1,
                                                                 "min_clients": 1})
    with pytest.raises(RefusedRequest, match="will not take part: .* at least 3 are needed"):
        SecAggClient(forged, task["secagg"]["client_id"])
    assert stored(server, task["round_id"]) == (0, "advertise")  # it sent nothing


def test_a_secure_config_with_t_above_the_target_is_accepted_then_fails_every_round(
        start_server, tmp_path):
    """Assumed corrupt devices and overcommit push t above the devices a round waits for:
    every round would be abandoned. Now refused when set, with the reason, and at start-up."""
    server = start_server(round=secure_round(5, 4))
    before = server.http.get(f"{server.url}/v1/admin/config", headers=server.admin,
                             timeout=30).json()
    for change, needle in [
            ({"target_reports": 10, "min_reports": 5, "overcommit": 1.5,
              "secagg_corrupt_rate": 0.3}, "need t = 15 share holders"),
            ({"target_reports": 10, "min_reports": 5, "overcommit": 2.0}, "need t = 11 share"),
            ({"round_seconds": 40.0, "secagg_phase_seconds": 15.0}, "more than 3 x")]:
        r = server.set_config(**change)
        assert r.status_code == 400 and r.json()["error"] == "bad_config", r.text
        assert needle in r.json()["message"] and "secure_aggregation" in r.json()["message"]
    after = server.http.get(f"{server.url}/v1/admin/config", headers=server.admin,
                            timeout=30).json()
    assert after == before
    with pytest.raises(ConfigError, match="cannot finish.*target_reports = 10"):
        load_settings({"data_dir": tmp_path}, env={"PK_ROUND_TARGET_REPORTS": "10",
                                                   "PK_ROUND_OVERCOMMIT": "2.0"})
    assert RoundConfig.from_dict({"overcommit": 2.0, "secure_aggregation": False})  # plain: fine
    assert server.set_config(target_reports=10, min_reports=5, overcommit=1.5).status_code == 200
