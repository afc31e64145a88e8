"""Federated evaluation (issue 18): devices score model versions on their own recent
messages over real HTTP, the server publishes only the noised aggregate, and that
aggregate is the central evaluation of the same words; impossible reports are refused."""
from __future__ import annotations

import json
import re
import math
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from data import Device, load_split
from federated import evaluation as ev
from federated.privacy import composed_epsilon, honest_reports
from keyboard_app.eligibility import Battery, Eligibility, EligibilitySettings
from keyboard_app.history import HistoryStore
from keyboard_app.privacy_policy import DevicePolicy
from keyboard_app.runtime import DeviceRuntime

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
MAX_WORDS = 60
EVAL_ROUNDS = {"target_reports": 3, "min_reports": 3, "overcommit": 1.0, "retry_after": 0.2,
               "participation_cap": 10, "train_batch_size": 4, "train_epochs": 1.0,
               "train_max_examples": 40, "evaluate_every": 1, "eval_max_words": MAX_WORDS}
NO_NOISE = {**EVAL_ROUNDS, "noise_multiplier": 0.0, "epsilon_budget": None}
# noise off, three-report rounds: looser than a phone's policy, so built in code
POLICY = DevicePolicy.relaxed(min_noise_multiplier=0.0, min_reports=1, epsilon_budget=None)


@pytest.fixture(scope="module")
def senders() -> dict[str, list[Device]]:
    """Three `valid` senders who only evaluate, three `federated` ones who only train."""
    valid = [d for d in load_split("valid") if 15 <= len(d.messages) <= 80][:3]
    federated = [d for d in load_split("federated") if 20 <= len(d.messages) <= 60][:3]
    return {"valid": valid, "federated": federated}


def phone(url, folder, device: Device, kinds, code, rng=None) -> DeviceRuntime:
    history = HistoryStore(":memory:", retention_days=None)
    history.add_many(device.messages)
    eligibility = Eligibility(EligibilitySettings(idle_seconds=0, min_new_messages=1),
                              battery=lambda: Battery(90.0, True))
    return DeviceRuntime(folder / device.sender, url, history=history, eligibility=eligibility,
                         poll_seconds=0.1, policy=POLICY, load_model=False, kinds=kinds,
                         enrolment_code=code, rng=rng)


def run_round(phones, outcome: str, server=None, kind: str | None = None) -> None:
    """Each phone's next pass ends in `outcome`; with `server`, once a round of `kind` is
    open (the round worker opens the next round after the last one closed)."""
    if server is not None:
        server.wait_for(lambda st: (st["round"] or {}).get("state") == "open"
                        and st["round"].get("kind") == kind, what=f"a {kind} round open")
    for p in phones:
        step = p.run_once()
        assert step.outcome == outcome, (step.outcome, step.detail)


def central(model_bytes: bytes, tokenizer_path, devices: list[Device]) -> dict:
    """docs/EVALUATION.md's figures, computed centrally (PyTorch) on the messages each
    device evaluated."""
    from model.checkpoint import model_from_bytes
    from model.evaluate import evaluate_scorer
    from model.tokenizer import WordTokenizer
    tokenizer = WordTokenizer.load(tokenizer_path)
    model = model_from_bytes(model_bytes, tokenizer.sha256)[0]
    chosen = [Device(d.sender, d.role, ev.select_messages(d.messages, MAX_WORDS))
              for d in devices]
    return evaluate_scorer(model, tokenizer, chosen)


def assert_agrees(version_result: dict, reference: dict) -> None:
    figures = version_result["figures"]
    for name in ("top1", "top3", "ksr"):
        assert figures[name]["value"] == pytest.approx(reference[name], abs=1e-4), name
        assert figures[name]["ci_low"] == pytest.approx(figures[name]["value"])  # no noise
    assert figures["perplexity"]["value"] == pytest.approx(reference["perplexity"], rel=1e-4)
    assert version_result["sums"]["words"] == pytest.approx(reference["words"], abs=1e-3)


def test_evaluation_rounds_match_central_evaluation(start_server, tmp_path, senders,
                                                    tiny_model):
    server = start_server(round=NO_NOISE)
    code = server.enrolment_code(uses=6)
    evaluators = [phone(server.url, tmp_path, d, ("evaluate",), code) for d in senders["valid"]]
    trainers = [phone(server.url, tmp_path, d, ("train",), code) for d in senders["federated"]]

    run_round(trainers, "no-task", server, "evaluate")  # version 0 first: trainers wait
    run_round(evaluators, "evaluated")
    run_round(evaluators, "no-task", server, "train")  # now a training round: they wait
    run_round(trainers, "uploaded")  # version 1
    run_round(evaluators, "evaluated", server, "evaluate")  # version 1 against 0, same words

    st = server.status()
    quality = st["evaluation"]["quality"]
    assert [q["model_version"] for q in quality] == [0, 1]
    assert [q["reports"] for q in quality] == [3, 3]
    last = st["evaluation"]["rounds"][-1]["result"]
    assert [v["version"] for v in last["versions"]] == [1, 0]
    for version in (0, 1):
        _, _, response = server.model(version)
        reference = central(response.content, tiny_model["tokenizer"], senders["valid"])
        for result in (r["result"] for r in st["evaluation"]["rounds"]):
            for v in result["versions"]:
                if v["version"] == version:
                    assert_agrees(v, reference)
    diff = last["top1_difference"]
    assert diff["value"] == pytest.approx(quality[1]["top1"]["value"]
                                          - quality[0]["top1"]["value"])
    # only aggregates are kept: no device's report survives its round
    with server.app.extensions["pk.service"].db.read() as s:
        from sqlalchemy import select

        from aggregation_server.db import Task
        assert all(t.metrics is None for t in s.scalars(select(Task)))
    gauges = dict(line.split(" ") for line in requests.get(
        f"{server.url}/metrics", timeout=30).text.splitlines() if line.startswith("pk_eval_"))
    assert float(gauges["pk_eval_top1"]) == pytest.approx(quality[1]["top1"]["value"])
    assert float(gauges["pk_eval_model_version"]) == 1.0


def test_an_evaluation_is_charged_like_a_plain_round(start_server, tmp_path, senders):
    """With noise on, each report is a Gaussian mechanism at z against the server and
    z*sqrt(h) against model users, in the server's accountant and the device's ledger;
    the published interval covers the exact figure the devices kept."""
    z = 2.0
    server = start_server(round={**EVAL_ROUNDS, "noise_multiplier": z, "epsilon_budget": 50.0})
    code = server.enrolment_code(uses=3)
    evaluators = [phone(server.url, tmp_path, d, ("evaluate",), code,
                        rng=np.random.default_rng(i)) for i, d in enumerate(senders["valid"])]
    run_round(evaluators, "evaluated", server, "evaluate")
    st = server.status()
    delta = st["privacy"]["delta"]
    h = honest_reports(EVAL_ROUNDS["min_reports"], st["privacy"]["dishonest_share"])
    assert st["privacy"]["epsilon_spent_max"] == pytest.approx(composed_epsilon([z], delta))
    assert st["privacy"]["epsilon_spent_max_model_users"] == pytest.approx(
        composed_epsilon([z * math.sqrt(h)], delta))
    entry = evaluators[0].ledger.entries()[-1]
    assert entry.accepted and entry.visible_multiplier == pytest.approx(z)
    assert "evaluation report" in entry.seen
    result = st["evaluation"]["rounds"][-1]["result"]
    assert result["reports"] == 3 and result["versions"][0]["noise_stddev"]["words"] > 0
    assert "Each device may spend at most epsilon 50" in st["privacy"]["budget_text"]


def report(sums: list[dict], clip_norm: float = 1.0) -> dict:
    return {"sums": ev.to_wire(sums, MAX_WORDS, clip_norm, 0.0)}


GOOD = {"words": 40, "messages": 6, "top1": 5, "top3": 11, "characters": 170,
        "keystrokes_saved": 30, "loss": 220.0}


@pytest.mark.parametrize("body, status, words", [
    (report([dict(GOOD, words=-3)]), 422, "below zero"),
    (report([dict(GOOD, top1=41, top3=41)]), 422, "accuracy above 1"),
    (report([dict(GOOD, top1=12)]), 422, "'top1'"),
    (report([dict(GOOD, words=MAX_WORDS + 5, top3=11)]), 422, f"the {MAX_WORDS} words"),
    (report([GOOD, GOOD]), 422, "1 list(s) of 7 numbers"),
    ({"sums": [[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, float("nan")]]}, 422, "finite"),
    ({"sums": [[1.0] * 7]}, 422, "L2 norm"),
    ({"sums": [["1"] * 7]}, 422, "numbers only"),
    ({"sums": [[0.1] * 7], "words": 3}, 400, "evaluation report is"),
])
def test_impossible_reports_are_refused_and_change_nothing(start_server, body, status, words):
    server = start_server(round=NO_NOISE)
    device = server.enrol()
    r = server.http.post(f"{server.url}/v1/checkin", json={"kinds": ["evaluate"]},
                         headers=device.headers, timeout=30)
    task = r.json()["task"]
    assert task["kind"] == "evaluate" and "train" not in task
    url = f"{server.url}/v1/rounds/{task['round_id']}/evaluation"
    headers = {**device.headers, "Idempotency-Key": str(uuid.uuid4()),
               "Content-Type": "application/json"}
    before = server.status()
    answer = server.http.put(url, data=json.dumps(body), headers=headers, timeout=30)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["message"]
    after = server.status()
    assert after["round"]["reports"] == 0 and after["privacy"] == before["privacy"]
    good = server.http.put(url, json=report([GOOD]), timeout=30,
                           headers={**device.headers, "Idempotency-Key": str(uuid.uuid4())})
    assert good.status_code == 202, good.text  # the task was still there, unused


def test_noise_margins_accept_faithful_reports_and_refuse_beyond(start_server):
    """With noise on, a noised count may be negative or above the cap: the server refuses
    only what lies beyond six standard deviations of the task's noise."""
    server = start_server(round={**EVAL_ROUNDS, "noise_multiplier": 1.0,
                                 "epsilon_budget": 50.0})
    device = server.enrol()
    task = server.http.post(f"{server.url}/v1/checkin", json={"kinds": ["evaluate"]},
                            headers=device.headers, timeout=30).json()["task"]
    sigma = ev.field_stddev(MAX_WORDS, 1.0, 1, task["noise_multiplier"])[0]  # in words
    url = f"{server.url}/v1/rounds/{task['round_id']}/evaluation"
    words = (MAX_WORDS + 6.5 * sigma) / ev.report_bound(MAX_WORDS, 1)  # in C units
    too_many = {"sums": [[words, 0, 0, 0, 0, 0, 0]]}  # within the norm bound, not the count's
    headers = {**device.headers, "Idempotency-Key": str(uuid.uuid4())}
    answer = server.http.put(url, json=too_many, headers=headers, timeout=30)
    assert answer.status_code == 422 and "words" in answer.json()["message"]
    noised = {"sums": ev.to_wire([dict(GOOD, words=0, top1=0, top3=0, messages=0)], MAX_WORDS,
                                 1.0, 1.0, np.random.default_rng(3))}
    headers = {**device.headers, "Idempotency-Key": str(uuid.uuid4())}
    assert server.http.put(url, json=noised, headers=headers, timeout=30).status_code == 202


def test_training_and_evaluation_endpoints_do_not_mix(start_server):
    server = start_server(round=NO_NOISE)
    device = server.enrol()
    assert server.checkin(device)["task"] is None  # an evaluation round; training only asked
    task = server.http.post(f"{server.url}/v1/checkin", json={"kinds": ["evaluate"]},
                            headers=device.headers, timeout=30).json()["task"]
    answer = server.upload(device, task["round_id"], b"not an update")
    assert answer.status_code == 409 and answer.json()["error"] == "evaluation_round"
    bad = server.http.post(f"{server.url}/v1/checkin", json={"kinds": ["sing"]},
                           headers=device.headers, timeout=30)
    assert bad.status_code == 400 and "kinds" in bad.json()["message"]


def _evaluation_round(server, rng: np.random.Generator, top1: float) -> None:
    """Five devices report (over HTTP) what a faithful phone with that top-1 would send."""
    for _ in range(5):
        device = server.enrol()
        task = server.http.post(f"{server.url}/v1/checkin", json={"kinds": ["evaluate"]},
                                headers=device.headers, timeout=30).json()["task"]
        assert task["kind"] == "evaluate", task
        words = int(rng.integers(40, MAX_WORDS))
        sums = [dict(GOOD, words=words, top1=round(words * (top1 - 0.01 * i)),
                     top3=round(words * (top1 + 0.12 - 0.01 * i)), characters=words * 4.3,
                     keystrokes_saved=words * (1.2 + top1 - 0.01 * i), loss=words * 5.5)
                for i in range(len(task["evaluate"]["versions"]))]
        body = {"sums": ev.to_wire(sums, MAX_WORDS, task["clip_norm"],
                                   task["noise_multiplier"] * task["clip_norm"], rng)}
        answer = server.http.put(f"{server.url}/v1/rounds/{task['round_id']}/evaluation",
                                 json=body, timeout=30, headers={
                                     **device.headers, "Idempotency-Key": str(uuid.uuid4())})
        assert answer.status_code == 202, answer.text


def _training_round(server) -> None:
    devices = [server.enrol() for _ in range(5)]
    for i, d in enumerate(devices):
        task = server.http.post(f"{server.url}/v1/checkin", json={"kinds": ["train"]},
                                headers=d.headers, timeout=30).json()["task"]
        body = server.update_bytes(task, seed=i)
        assert server.upload(d, task["round_id"], body).status_code == 202


@pytest.mark.slow
def test_dashboard_shows_quality_by_version(start_server, tmp_path):
    """The operator's view in Chromium: quality against model version with its noise
    interval, reports per evaluation round, the budget in words; never None, n/a or inf.
    The screenshot is test-artifacts/dashboard.png (docs/dashboard.png in the README)."""
    from test_server_dashboard import CHROMIUM_FLAGS, chromium
    binary = chromium()
    server = start_server(round={**EVAL_ROUNDS, "target_reports": 5, "min_reports": 5,
                                 "noise_multiplier": 0.1, "epsilon_budget": None,
                                 "participation_cap": 5})
    rng = np.random.default_rng(0)
    for top1 in (0.14, 0.16, 0.18):
        _evaluation_round(server, rng, top1)
        _training_round(server)
    html = requests.get(server.url + "/", timeout=30).text
    for word in ("None", "n/a", "inf", "nan"):
        assert f">{word}<" not in html and f" {word} " not in html, word
    assert "Quality on devices" in html and "No budget is set" in html
    assert "to" in html.split("top-1 on devices")[1][:200]  # an interval beside the figure
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", server.url + "/"],
                   check=True, timeout=120, capture_output=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    blue = np.abs(pixels - [0x25, 0x63, 0xEB]).sum(axis=2) < 30
    assert blue.sum() > 500, "no chart visible"


# ---------------------------------------------------------- the phone's last word (review)
@pytest.mark.parametrize("round_, code", [
    ({"noise_multiplier": 0.5, "min_reports": 5}, "noise_too_low"),  # below the policy's 1
    ({"noise_multiplier": 1.0, "min_reports": 2, "target_reports": 2}, "cohort_too_small"),
])
def test_a_phone_refuses_an_evaluation_outside_its_policy(start_server, tmp_path, senders,
                                                          round_, code):
    """An evaluation task is checked like a training task by the phone's own (default)
    policy: too little noise or too small a cohort is refused, recorded, and nothing sent."""
    server = start_server(round={**EVAL_ROUNDS, "target_reports": 5, "epsilon_budget": None,
                                 **round_})
    device = phone(server.url, tmp_path, senders["valid"][0], ("evaluate",),
                   server.enrolment_code())
    device.policy = DevicePolicy()
    run_round([device], "refused", server, "evaluate")
    assert device.ledger.refusals()[0]["code"] == code
    assert device.ledger.entries() == [] and server.status()["round"]["reports"] == 0


def test_a_trainer_does_not_evaluate_for_a_server_that_ignores_what_it_asked(
        start_server, tmp_path, senders):
    """A phone that takes only training tasks refuses an evaluation task handed to it
    anyway (here: a check-in that asks for both, as a server ignoring `kinds` would)."""
    server = start_server(round=NO_NOISE)
    device = phone(server.url, tmp_path, senders["federated"][0], ("train",),
                   server.enrolment_code())
    ask = device.client.checkin
    device.client.checkin = lambda version, kinds: ask(version, ("train", "evaluate"))
    server.wait_for(lambda st: (st["round"] or {}).get("state") == "open",
                    what="the evaluation round open")
    step = device.run_once()
    assert step.outcome == "rejected" and "takes only train" in step.detail
    assert device.ledger.entries() == [] and server.status()["round"]["reports"] == 0


@pytest.mark.parametrize("change, words", [
    ({"evaluate": {"versions": [{"version": 0, "sha256": "0" * 64}], "max_words": 10 ** 9}},
     "'max_words' must be an integer in 1..100000"),
    ({"compression": {}}, "task 'compression'"),
    ({"secure_aggregation": True}, "secagg"),
    ({"train": {"epochs": 1, "batch_size": 8, "lr": 0.1, "optimizer": "sgd",
                "max_examples": 10}}, "has 'train' exactly when it trains"),
])
def test_an_evaluation_task_beyond_what_a_faithful_server_sends_is_refused(change, words):
    """What the server's config bounds cannot produce (a word cap over MAX_WORDS, a
    compressed, secure or training evaluation) the phone does not even parse."""
    from conftest import task_json
    from federated.protocol import Task
    from federated.wire import WireError
    task = task_json(round_id=3, kind="evaluate", min_reports=5, evaluate={
        "versions": [{"version": 0, "sha256": "0" * 64}], "max_words": 200})
    del task["train"]
    assert Task.from_json(task).evaluate.max_words == 200
    with pytest.raises(WireError, match=words):
        Task.from_json({**task, **change})


def test_the_report_is_finite_and_the_words_the_most_recent_within_the_cap():
    """A model that gives a word no probability (infinite loss) still makes a report the
    server takes; the words scored are the newest whole messages within the cap."""
    values = ev.to_wire([dict(GOOD, loss=math.inf)], MAX_WORDS, 1.0, 0.0)
    assert np.isfinite(values).all()
    ev.check_report(values, 1, MAX_WORDS, 1.0, 0.0)  # no ReportError
    messages = ["one two three", "four five", "", "six seven eight nine", "ten"]
    assert ev.select_messages(messages, 5) == ["six seven eight nine", "ten"]
    assert ev.select_messages(messages, 4) == ["four five", "ten"]  # whole, skipping
    assert ev.select_messages(messages, 100) == [m for m in messages if m]


def test_the_paired_difference_keeps_the_noise_of_intervals_cut_at_zero():
    """A top-1 near 0 with wide noise has its interval cut at 0; the difference of two
    versions must still carry both figures' full noise (their standard errors), not the
    cut widths, which made its interval too narrow."""
    sigma = np.array([2.0, 2.0, 30.0, 30.0, 10.0, 10.0, 10.0])  # per field, in its units
    low = np.array([500.0, 60.0, 10.0, 40.0, 2500.0, 500.0, 3000.0])
    high = np.array([500.0, 60.0, 250.0, 300.0, 2500.0, 900.0, 3000.0])
    current, previous = ev.summarize(high, sigma), ev.summarize(low, sigma)
    assert previous["figures"]["top1"]["ci_low"] == 0.0  # cut: 0.02 - 1.96 * 0.06 < 0
    se = math.hypot(30.0, 30.0) / 500.0  # each top-1's noise: sigma_top1 / words (nearly)
    diff = ev.paired_difference(current, previous)
    assert diff["value"] == pytest.approx(0.48)
    assert (diff["ci_high"] - diff["ci_low"]) / 2 == pytest.approx(ev.Z95 * se, rel=0.01)


def test_a_report_whose_sending_failed_is_sent_again_unchanged(start_server, tmp_path, senders):
    """The server may have read a report whose answer never came: the phone sends the same
    bytes under the same key, never a second report of the same words with fresh noise
    (that would be a second release), and its ledger holds one row."""
    from keyboard_app.client import ServerUnavailable
    server = start_server(round={**EVAL_ROUNDS, "noise_multiplier": 1.0, "epsilon_budget": None})
    device = phone(server.url, tmp_path, senders["valid"][0], ("evaluate",),
                   server.enrolment_code())
    send, sent = device.client.report_evaluation, []

    def flaky(round_id, body, key=None):
        sent.append((body, key))
        if len(sent) == 1:
            raise ServerUnavailable("the connection dropped before the answer")
        return send(round_id, body, key)
    device.client.report_evaluation = flaky
    server.wait_for(lambda st: (st["round"] or {}).get("state") == "open",
                    what="the evaluation round open")
    assert device.run_once().outcome == "offline"
    assert device.run_once().outcome == "evaluated"
    assert len(sent) == 2 and sent[0] == sent[1]
    assert [e.accepted for e in device.ledger.entries()] == [True]
    assert server.status()["round"]["reports"] == 1


@pytest.mark.parametrize("round_", [
    {"noise_multiplier": 0.0, "epsilon_budget": None},  # no noise: no guarantee, in words
    {"noise_multiplier": 1.0, "epsilon_budget": 30.0},
])
def test_no_none_or_infinity_reaches_the_operator(start_server, round_):
    """The dashboard and the budget line say in words what a missing or infinite epsilon
    means (the issue saw 'n/a / None' and 'reaches infinity')."""
    server = start_server(round={**EVAL_ROUNDS, **round_})
    html = requests.get(server.url + "/", timeout=30).text
    text = re.sub(r"<[^>]+>", " ", html.split("<body>")[1])
    for word in ("None", "n/a", "inf", "Infinity", "infinity", "nan", "NaN", "null"):
        assert not re.search(rf"(?<![\w/]){re.escape(word)}(?![\w/])", text), word
    line = server.status()["privacy"]["budget_text"]
    assert ("no privacy guarantee" in line) == (round_["noise_multiplier"] == 0)
    assert "Privacy budget: " + line.split(";")[0] in html.replace("&#x27;", "'")


def test_a_phone_with_compact_downloads_evaluates_the_rounds_own_model(start_server, tmp_path,
                                                                       senders):
    """A phone that downloads the int8 form for prediction scores the round's float32
    model, the one the task names by sha256 (its int8 copy has another sha256)."""
    server = start_server(round={**EVAL_ROUNDS, "noise_multiplier": 0.0, "epsilon_budget": None})
    device = phone(server.url, tmp_path, senders["valid"][0], ("evaluate",),
                   server.enrolment_code())
    device.compact_downloads = True
    run_round([device], "evaluated", server, "evaluate")
    assert [e.accepted for e in device.ledger.entries()] == [True]


def test_an_evaluation_and_a_training_round_compose_in_both_accounts(start_server, tmp_path,
                                                                    senders):
    """A phone that evaluates and then trains is charged twice, in the server's accountant
    and in its own ledger: epsilon composes both releases (dp-accounting)."""
    z = 2.0
    server = start_server(round={**EVAL_ROUNDS, "noise_multiplier": z, "epsilon_budget": 50.0,
                                 "secure_aggregation": False})
    code = server.enrolment_code(uses=3)
    phones = [phone(server.url, tmp_path, d, ("train", "evaluate"), code,
                    rng=np.random.default_rng(i)) for i, d in enumerate(senders["federated"])]
    run_round(phones, "evaluated", server, "evaluate")
    run_round(phones, "uploaded", server, "train")
    st = server.wait_for(lambda st: st["rounds_closed"] >= 2, what="both rounds closed")
    delta = st["privacy"]["delta"]
    assert st["privacy"]["epsilon_spent_max"] == pytest.approx(composed_epsilon([z, z], delta))
    ledger = phones[0].ledger
    assert [e.visible_multiplier for e in ledger.entries()] == [pytest.approx(z)] * 2
    assert ledger.epsilon(POLICY.delta) == pytest.approx(composed_epsilon([z, z], POLICY.delta))
