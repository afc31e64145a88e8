"""The fleet simulator: real device runtimes in worker processes, real HTTP, a real server."""
import contextlib
import json
import math
import signal
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import psutil
import pytest
import torch

from conftest import poll
from data import Device, load_split
from federated import privacy
from fleet import simulate
from fleet.config import FleetConfig
from fleet.population import check_in_order
from fleet.run import run_fleet
from model.checkpoint import load_checkpoint
from model.paths import ROOT
from model.tokenizer import WordTokenizer
from model.train import mean_loss

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def senders():
    """Six real `federated` users with a few dozen messages each."""
    picked = [d for d in load_split("federated") if 20 <= len(d.messages) <= 60][:6]
    assert len(picked) == 6
    return picked


def records_of(run_dir):
    return [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]


def loss_on(checkpoint, tokenizer, devices) -> float:
    model, _ = load_checkpoint(checkpoint, tokenizer.sha256)
    messages = [m for d in devices for m in d.messages]
    return mean_loss(model, tokenizer.encode_messages(messages), tokenizer.pad_id)


def test_fleet_with_its_own_server_improves_the_model_on_its_users(tiny_model, tmp_path,
                                                                   senders):
    """Its own server process (SQLite), secure rounds (the default: a round's devices run
    as threads of this process): 3 rounds of 3 devices."""
    torch.set_num_threads(1)
    run_dir = tmp_path / "run"
    population = [d.sender for d in senders]
    config = FleetConfig(rounds=3, devices_per_round=3, max_examples=40, batch_size=8,
                         client_lr=0.5, server_optimizer="fedavg", clip_norm=5.0,
                         eval_every=2, eval_senders=4, final_eval=False, workers=2, seed=3)
    summary = run_fleet(config, run_dir, init_model=tiny_model["checkpoint"],
                        tokenizer=tiny_model["tokenizer"], senders=population, progress=False)

    records = records_of(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    for k, r in enumerate(records[1:], start=1):
        assert r["state"] == "closed" and r["reports"] == 3 == r["outcomes"]["uploaded"]
        # the documented sampling: the first devices of a seeded uniform permutation
        order = np.random.default_rng([3, k]).permutation(len(population))
        assert r["checked_in"] == order[:3].tolist()
        assert r["upload_bytes"] > 0 and math.isfinite(r["local_loss"])
        assert r["epsilon"] is None  # no noise: no differential privacy claimed
    # the learning curve: federated evaluation of versions 0 and 2 (every 2nd) and the final
    # one, 3, by valid senders' phones, without noise exactly the central evaluation of the
    # same versions on the same words
    assert [r["round"] for r in records if r.get("valid")] == [0, 2, 3]
    for r in (records[0], records[2], records[-1]):
        assert r["valid"]["source"] == "federated evaluation" and r["valid"]["senders"] == 3
        for name, agreed in r["valid_agreement"].items():
            assert agreed["difference"] == pytest.approx(0, abs=1e-4), name
    assert records[-1]["valid"]["model_version"] == 3
    assert len(summary["evaluation_agreement"]) == 3
    assert summary["rounds_closed"] == 3 and summary["reports"] == 9
    assert json.loads((run_dir / "population.json").read_text()) == population
    png = (run_dir / "fleet.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5_000
    assert (run_dir / "server" / "server.sqlite3").is_file()  # its own server, SQLite

    # The global model improved on the messages of the users it was trained on.
    tokenizer = WordTokenizer.load(tiny_model["tokenizer"])
    before = loss_on(tiny_model["checkpoint"], tokenizer, senders)
    after = loss_on(run_dir / "model.safetensors", tokenizer, senders)
    assert after < before - 0.2, (before, after)


def test_dropout_and_privacy_against_a_running_server(start_server, tmp_path, senders):
    """Plain rounds, devices in a worker process: dropped devices send nothing and are
    replaced; epsilon is the server's accountant's, against the server (each update with
    its own noise z*C) and against model users (the mean: z*sqrt(h))."""
    torch.set_num_threads(1)
    server = start_server()
    config = FleetConfig(rounds=3, devices_per_round=2, dropout=0.5, max_examples=30,
                         batch_size=8, clip_norm=0.5, noise_multiplier=1.0, delta=1e-5,
                         server_optimizer="fedavg", eval_every=0, final_eval=False,
                         workers=1, seed=1, secure_aggregation=False)
    summary = run_fleet(config, tmp_path / "run", server_url=server.url,
                        admin_token=server.admin_token,
                        senders=[d.sender for d in senders], progress=False)

    records = records_of(tmp_path / "run")[1:]
    assert [r["reports"] for r in records] == [2, 2, 2]
    dropped = sum(r["outcomes"].get("interrupted", 0) for r in records)
    assert dropped > 0  # seed 1 drops some; each was replaced by the next device
    for r in records:
        assert len(set(r["checked_in"])) == len(r["checked_in"]) == r["tasks_issued"]
        assert r["outcomes"].get("interrupted", 0) + r["reports"] == r["tasks_issued"]
    status = server.status()
    assert status["config"]["target_reports"] == 2 and status["config"]["noise_multiplier"] == 1.0
    assert status["config"]["participation_cap"] == 3 and status["config"]["epsilon_budget"] is None
    most = max(int(n) for n in status["devices"]["participations"])
    expected = privacy.epsilon(1.0, most, 1e-5)
    assert summary["epsilon"] == pytest.approx(expected)
    assert records[-1]["epsilon"] == pytest.approx(expected)
    users = privacy.composed_epsilon([math.sqrt(privacy.honest_reports(2))] * most, 1e-5)
    assert summary["epsilon_model_users"] == pytest.approx(users) and users < expected
    assert status["config"]["secure_aggregation"] is False
    assert records[-1]["epsilon_if_sampled"] == pytest.approx(
        privacy.epsilon(1.0, 3, 1e-5, sampling_rate=2 / 6, rounds=3))
    assert status["training"] == "stopped"  # the simulator stops training when done


def test_command_line_checks(capsys):
    assert simulate.main(["--server", "http://127.0.0.1:9", "--admin-token", ""]) == 2
    assert "--admin-token" in capsys.readouterr().err
    assert simulate.main(["--dropout", "1.0"]) == 2
    assert "dropout" in capsys.readouterr().err
    with pytest.raises(ValueError, match="server optimizer"):
        FleetConfig(server_optimizer="sgd")
    with pytest.raises(ValueError, match="check-in"):
        FleetConfig(check_in="by-battery")
    with pytest.raises(ValueError, match="assume-sampling"):
        FleetConfig(check_in="by-data", assume_sampling=True)
    with pytest.raises(ValueError, match="server lr schedule"):
        FleetConfig(server_lr_schedule="step")
    settings = FleetConfig(rounds=7, server_lr_schedule="cosine").round_settings(population=10)
    assert (settings["server_lr_schedule"], settings["server_lr_rounds"]) == ("cosine", 7)


def test_a_run_is_described_in_sentences():
    """The lines a person reads after a fleet: what each round did, exact figures said to be
    exact, and evaluations hidden by the noise said so (not "- ... 0 of 0 times")."""
    from fleet.report import describe
    exact = {"source": "federated evaluation", "top1": 0.19, "top1_ci": [0.19, 0.19],
             "top3": 0.33, "top3_ci": [0.33, 0.33], "model_version": 0, "senders": 6}
    hidden = {**exact, "top1": None, "top3": None}
    base = {"rounds_run": 3, "rounds_closed": 3, "reports": 18, "population": 922,
            "wall_seconds": 30.0, "final_valid": None, "epsilon": None,
            "epsilon_if_sampled": None, "delta": 1e-5}
    plain = describe({**base, "config": asdict(FleetConfig(clip_norm=0.5)),
                      "noise_multiplier": 0.0, "start_valid": exact, "last_valid": exact,
                      "evaluation_agreement": [{"round": 0, "top1": {
                          "difference": 0.0, "within_interval": True}}]})
    assert "added no noise; secure aggregation: the server saw only the round's sum" in plain
    assert "top-1 19.00% (exact: no noise)" in plain
    assert "held-out senders (valid), at the start: top-1" in plain  # says what 'valid' is
    noised = describe({**base, "config": asdict(FleetConfig(
        clip_norm=0.1, noise_multiplier=1.0, secure_aggregation=False, compression="ddg16")),
        "noise_multiplier": 1.0, "epsilon": 4.7, "epsilon_model_users": 2.0,
        "privacy": {"dishonest_share": 1 / 3}, "start_valid": hidden, "last_valid": hidden,
        "evaluation_agreement": [{"round": 0, "top1": {"difference": None,
                                                        "within_interval": None}}]})
    assert "z = 1 on each update), compressed it (ddg16); plain rounds" in noised
    assert "none of the 1 evaluations published a top-1" in noised and "0 of 0" not in noised


def test_check_in_by_data_favours_devices_that_type_more():
    sizes = [1] * 9 + [91]  # the last device wrote 91 of the 100 messages
    population = [Device(f"s{i}", "federated", ["hi"] * n, [0.0] * n)
                  for i, n in enumerate(sizes)]
    rng = np.random.default_rng(0)
    firsts = {how: [int(check_in_order(population, how, rng)[0]) for _ in range(2000)]
              for how in ("uniform", "by-data")}
    for how, first in firsts.items():
        orders = check_in_order(population, how, rng)
        assert sorted(orders) == list(range(10))  # a permutation: nobody twice, nobody left out
    assert firsts["by-data"].count(9) / 2000 == pytest.approx(0.91, abs=0.03)
    assert firsts["uniform"].count(9) / 2000 == pytest.approx(0.10, abs=0.03)


def test_a_killed_fleet_leaves_no_process_behind(tiny_model, tmp_path):
    """SIGTERM ends the fleet like Ctrl-C: its worker processes and its server end too."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.simulate",
         "--init-model", str(tiny_model["checkpoint"]), "--tokenizer", str(tiny_model["tokenizer"]),
         "--rounds", "1000", "--population", "6",
         "--devices-per-round", "2", "--max-examples", "20", "--eval-every", "0",
         "--no-secure-aggregation",  # plain rounds: devices in worker processes
         "--no-final-eval", "-q", "--run-dir", str(run_dir)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def three_rounds() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()
            return len(_lines(run_dir / "rounds.jsonl")) >= 3
        poll(three_rounds, 120, "three rounds of the fleet process", every=0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # two workers and the server at least
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
        _, alive = psutil.wait_procs(children, timeout=20)
        assert alive == []
    finally:  # a failed assertion above must not leave the fleet's server running either
        leftovers = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None \
            else []
        for p in [*leftovers, proc]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                p.kill()


def _lines(path):
    return path.read_text().splitlines() if path.is_file() else []


def test_the_demo_table_says_what_its_columns_are():
    """A person reading the demo's table learns what top-1, macro, KSR and perplexity mean."""
    from fleet.demo import LEGEND
    from fleet.demo_report import table_rows
    for column in table_rows([], {})[0][1:-1]:
        for term in column.split():
            assert term in LEGEND, term
