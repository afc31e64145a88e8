"""Attacks on secure rounds, replayed against a real server over HTTP; each now fails.

One test per attack, named after it. Where the attacker is the server itself, the test
runs a real server and plays the malicious part in between: it changes what the server
hands to a device (a task, a relay) before the device's own code sees it.
"""
from __future__ import annotations

import base64
import threading

import numpy as np
import pytest
from conftest import task_noise
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from aggregation_server.config import ConfigError, RoundConfig, load_settings
from aggregation_server.db import SecAggMessage
from federated.privacy import privatize
from federated.secagg import RefusedRequest, SecAggClient, SecAggServerRound
from federated.secagg import SecAggConfig
from federated.secagg.params import hiding_problem
from federated.wire import Update
from keyboard_app.client import ServerRejected, SyncClient
from keyboard_app.secure_upload import SecureRoundError, SecureUpload
from test_secure_rounds import secure_round, stored


def test_threshold_1_lets_the_server_recover_one_input(start_server):
    """A server that hands out t = 1 needs one share of each secret: the device's own seed
    share and any neighbour's key share give it the input. The device now refuses such a
    task before it sends anything, and the server's own configs never make one."""
    server = start_server(round=secure_round(4, 3))
    device = server.enrol()
    task = server.task(device)
    honest = SecAggConfig.from_dict(task["secagg"]["config"])
    assert hiding_problem(honest.num_clients, honest.degree, honest.threshold) is None
    forged = SecAggConfig.from_dict(task["secagg"]["config"] | {"threshold": 1,
                                                                 "min_clients": 1})
    with pytest.raises(RefusedRequest, match="will not take part: .* at least 3 are needed"):
        SecAggClient(forged, task["secagg"]["client_id"], identity=device.key)
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
            ({"round_seconds": 55.0, "secagg_phase_seconds": 15.0}, "more than 4 x")]:
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


# ---------------------------------------------------------------- a malicious server


class TamperingClient(SyncClient):
    """A device's real client, with what the server relays passed through `tamper(step,
    relay)` first: the malicious part of the server, played by the test."""

    def __init__(self, *args, tamper=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tamper = tamper or (lambda step, relay: relay)

    def secagg_fetch(self, round_id: int, step: str) -> tuple[dict | None, float]:
        relay, wait = super().secagg_fetch(round_id, step)
        return (None if relay is None else self.tamper(step, relay)), wait


def run_secure_round(server, tmp_path, n: int, tampers: dict) -> dict[int, str]:
    """n devices in threads, each through its real `SecureUpload`; the relays to protocol
    client c are tampered by `tampers.get(c)`: {c: "done" or the reason it left}."""
    outcomes: dict[int, str] = {}

    def device(i: int) -> None:
        client = TamperingClient(server.url, tmp_path / f"device{i}",
                                 enrolment_code=server.enrolment_code())
        try:
            task = client.checkin()
            i = task.secagg.client_id
            client.tamper = tampers.get(i, client.tamper)
            raw = {k: np.random.default_rng(i).normal(0, 0.05, s).astype(np.float32)
                   for k, s in server.shapes.items()}
            tensors, _ = privatize(raw, task.clip_norm, task_noise(task),
                                   np.random.default_rng(i + 100))
            update = Update(tensors, task.round_id, task.model_version, 20, {})
            SecureUpload(client, task).run(update)
            outcomes[i] = "done"
        except (SecureRoundError, ServerRejected) as err:
            outcomes[i] = str(err)
        finally:
            client.close()
    threads = [threading.Thread(target=device, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(outcomes) == n, outcomes
    return outcomes


def unmask_posts(server, round_id: int) -> int:
    """How many devices revealed shares (unmask responses the server took)."""
    with server.app.extensions["pk.service"].db.read() as s:
        return s.scalar(select(func.count()).select_from(SecAggMessage).where(
            SecAggMessage.round_id == round_id, SecAggMessage.phase == "unmask",
            SecAggMessage.body.contains('"unmask_response"')))


def test_the_server_shows_different_devices_different_dropout_sets(start_server, tmp_path,
                                                                  monkeypatch):
    """The server tells three of five devices (clients 3, 4, 5) that client 1 dropped out
    after sharing its keys (to collect its mask key from them) and the other two that it
    survived (to collect its seed): it takes every signature without checking and relays
    them all. Each device
    finds signatures of a different list beside its own, aborts, reveals nothing, and says
    so; the operator sees the round abandoned because devices aborted, and why."""
    monkeypatch.setattr(SecAggServerRound, "_take_consistency",  # the server checks nothing
                        lambda self, sender, msg: self.signatures.__setitem__(sender,
                                                                               msg.signature))
    server = start_server(round=secure_round(5, 3))

    def without_client_1(step: str, relay: dict) -> dict:
        if step == "consistency":
            relay["survivors"] = [v for v in relay["survivors"] if v != 1]
        if step == "unmask" and 1 in relay["survivors"]:
            relay["survivors"].remove(1)
            relay["dropped"] = sorted([*relay["dropped"], 1])
            relay["signatures"].pop("1")  # a "dropped" client's signature would give it away
        return relay
    outcomes = run_secure_round(server, tmp_path, 5, {c: without_client_1 for c in (3, 4, 5)})
    assert all("revealed nothing more" in why and "different lists" in why
               for why in outcomes.values()), outcomes
    st = server.wait_for(lambda st: st["rounds"][0]["state"] == "abandoned", what="abandoned")
    assert unmask_posts(server, st["rounds"][0]["id"]) == 0
    assert "devices aborted: 5 inconsistent_survivors" in st["rounds"][0]["reason"]
    secure = st["secure_aggregation"]
    assert secure["abandoned_by_cause"]["device_aborts"] == 1
    assert secure["device_aborts"]["inconsistent_survivors"] == 5
    page = server.http.get(server.url + "/", timeout=30).text
    assert "devices saw an inconsistent view and aborted" in page
    metrics = server.http.get(server.url + "/metrics", timeout=30).text
    assert 'pk_secagg_device_aborts_total{reason="inconsistent_survivors"} 5.0' in metrics
    assert 'pk_secagg_rounds_abandoned_total{cause="device_aborts"} 1.0' in metrics


def test_a_forged_survivor_signature(start_server, tmp_path):
    """The server relays to one device a neighbour's signature it made up. That device
    aborts before revealing anything; the others still have enough share holders, so the
    round closes with every masked input in the sum, and the abort is counted."""
    server = start_server(round=secure_round(5, 3))

    def forge(step: str, relay: dict) -> dict:
        if step == "unmask":
            first = next(iter(relay["signatures"]))
            relay["signatures"][first] = base64.b64encode(Ed25519PrivateKey.generate().sign(
                b"the survivors")).decode()
        return relay
    outcomes = run_secure_round(server, tmp_path, 5, {1: forge})
    assert "revealed nothing more" in outcomes[1] and "forged signature" in outcomes[1]
    assert [outcomes[c] for c in range(2, 6)] == ["done"] * 4, outcomes
    st = server.wait_for(lambda st: st["model"]["version"] == 1, what="round closed")
    assert st["rounds"][0]["reports"] == 5 and unmask_posts(server, st["rounds"][0]["id"]) == 4
    assert st["secure_aggregation"]["device_aborts"]["inconsistent_survivors"] == 1
    assert st["secure_aggregation"]["abandoned"] == 0


def test_the_server_swaps_a_devices_keys_for_its_own(start_server, tmp_path):
    """Man in the middle: the server relays its own key in place of a neighbour's, to read
    the shares sent to it. Keys are signed with identity keys bound at enrolment: the
    device aborts before sharing anything."""
    server = start_server(round=secure_round(4, 3))
    mine = base64.b64encode(bytes(range(1, 33))).decode()

    def swap(step: str, relay: dict) -> dict:
        if step == "keys":
            relay["keys"][next(iter(relay["keys"]))]["cipher_key"] = mine
        return relay
    outcomes = run_secure_round(server, tmp_path, 4, {1: swap})
    assert "someone may be posing as it" in outcomes[1], outcomes
    st = server.wait_for(lambda st: st["model"]["version"] == 1, what="round closed")
    assert st["rounds"][0]["reports"] == 3
    assert st["secure_aggregation"]["device_aborts"]["impersonation"] == 1
