"""`python -m aggregation_server backup` / `restore`: a backup taken while a round is under
way, restored into a fresh server, which then finishes that round."""
from __future__ import annotations

import subprocess
import sys
import tarfile

import numpy as np
import pytest

from conftest import ROOT

ROUND = {"target_reports": 2, "min_reports": 2, "overcommit": 1.0}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aggregation_server", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def delta(body: bytes, shapes: dict) -> dict:
    from federated.wire import decode_update
    return decode_update(body, shapes).tensors


def finish_round(server, devices, seed: int = 0) -> list[bytes]:
    bodies = []
    for i, device in enumerate(devices):
        task = server.task(device)
        bodies.append(server.update_bytes(task, seed=seed + i))
        assert server.upload(device, task["round_id"], bodies[-1]).status_code == 202
    return bodies


def test_restored_server_continues_the_run(start_server, tmp_path, tiny_model):
    old = start_server(round=ROUND)
    code = old.enrolment_code(uses=2)
    first, second = old.enrol(code), old.enrol(code)
    finish_round(old, [first, second])  # version 1
    in_flight = finish_round(old, [first], seed=10)[0]  # round 2: one of two updates
    archive = tmp_path / "backup.tar"

    made = cli("backup", str(archive), "--data-dir", str(old.data_dir))
    assert made.returncode == 0, made.stderr
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "tables/tasks.jsonl" in names and "blobs/models/000001.safetensors" in names
    assert any(n.startswith("blobs/updates/2/") for n in names)  # the pending update

    fresh = tmp_path / "restored"
    done = cli("restore", str(archive), "--data-dir", str(fresh))
    assert done.returncode == 0, done.stderr
    assert "restored from" in done.stdout
    again = cli("restore", str(archive), "--data-dir", str(fresh))
    assert again.returncode == 2 and "not empty" in again.stderr

    new = start_server(data_dir=fresh, round=ROUND)
    assert new.status()["model"]["version"] == 1
    task = new.task(second)  # the same device token works on the restored server
    body = new.update_bytes(task, seed=11)
    assert new.upload(second, task["round_id"], body).status_code == 202
    new.wait_for(lambda st: st["model"]["version"] == 2, what="version 2")

    base, shapes = old.model(1)[0], tiny_model["shapes"]
    got = new.model(2)[0]
    for name in base:
        expected = base[name] + (delta(in_flight, shapes)[name] + delta(body, shapes)[name]) / 2
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6)


def test_restore_refuses_what_is_not_a_backup(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar file")
    result = cli("restore", str(junk), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2 and "is not a server backup" in result.stderr


def test_backup_of_a_folder_without_a_server(tmp_path):
    result = cli("backup", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "none"))
    assert result.returncode == 2 and "no server data there" in result.stderr
    assert not (tmp_path / "b.tar").exists() and not (tmp_path / "none").exists()


@pytest.mark.postgres
def test_database_blobs_back_up_into_files(start_process, pg_url, tmp_path, monkeypatch,
                                           start_server):
    monkeypatch.setenv("PK_BLOB_STORE", "database")
    old = start_process(tmp_path / "host", pg_url, round=ROUND)
    code = old.enrolment_code(uses=2)
    devices = [old.enrol(code), old.enrol(code)]
    finish_round(old, devices)
    old.wait_for(lambda st: st["model"]["version"] == 1, what="version 1")
    archive = tmp_path / "backup.tar"
    made = cli("backup", str(archive), "--data-dir", str(old.data_dir), "--db", pg_url)
    assert made.returncode == 0, made.stderr
    monkeypatch.delenv("PK_BLOB_STORE")
    done = cli("restore", str(archive), "--data-dir", str(tmp_path / "files"))
    assert done.returncode == 0, done.stderr
    new = start_server(data_dir=tmp_path / "files", round=ROUND)
    assert new.model(1)[2].content == old.model(1)[2].content
    assert (tmp_path / "files" / "models" / "000001.safetensors").is_file()
