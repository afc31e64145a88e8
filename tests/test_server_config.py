"""Settings layering (defaults < file < environment < flags) and start-up checks of the init model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from aggregation_server.__main__ import main
from aggregation_server.config import ConfigError, RoundConfig, Settings, load_settings


def test_defaults_work_out_of_the_box():
    settings = load_settings({}, env={})
    assert settings == Settings()
    assert settings.database_url.startswith("sqlite:///") and settings.port == 8080
    RoundConfig().validate()


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_file_then_environment_then_flags(tmp_path, suffix):
    path = tmp_path / f"server{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"port": 9000, "host": "0.0.0.0", "tick_seconds": 5,
                                    "round": {"target_reports": 50, "min_reports": 40}}))
    else:
        path.write_text('port = 9000\nhost = "0.0.0.0"\ntick_seconds = 5\n'
                        '[round]\ntarget_reports = 50\nmin_reports = 40\n')
    env = {"PK_PORT": "9100", "PK_ROUND_TARGET_REPORTS": "60", "PK_ROUND_EPSILON_BUDGET": "null",
           "PK_START_TRAINING": "false"}
    settings = load_settings({"config": str(path), "port": 9200, "data_dir": "d"}, env=env)
    assert settings.port == 9200 and settings.host == "0.0.0.0" and settings.tick_seconds == 5
    assert settings.data_dir == Path("d") and settings.start_training is False
    assert settings.round == {"target_reports": 60, "min_reports": 40, "epsilon_budget": None}
    assert load_settings({}, env={"PK_CONFIG": str(path)}).port == 9000


@pytest.mark.parametrize("flags, env, needle", [
    ({}, {"PK_PORT": "eighty"}, "PK_PORT='eighty' is not a valid int"),
    ({}, {"PK_ROUND_CLIP_NORM": "x"}, "PK_ROUND_CLIP_NORM"),
    ({}, {"PK_ROUND_MIN_REPORTS": "0"}, "min_reports must be at least 1"),
    ({}, {"PK_ROUND_SERVER_LR_SCHEDULE": "step"}, "server_lr_schedule must be one of"),
    ({}, {"PK_ROUND_SERVER_LR_ROUNDS": "0"}, "server_lr_rounds must be in"),
    ({}, {"PK_START_TRAINING": "maybe"}, "PK_START_TRAINING"),
    ({"config": "/nonexistent.toml"}, {}, "not found"),
])
def test_bad_settings_are_refused(flags, env, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_settings(flags, env=env)


def test_bad_config_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("port = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_settings({"config": str(bad)}, env={})
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"prot": 1}))
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['prot'\]"):
        load_settings({"config": str(unknown)}, env={})
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"port": "x"}))
    with pytest.raises(ConfigError, match="port must be a number"):
        load_settings({"config": str(wrong)}, env={})


def _cli(tmp_path, *args) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--port", "0", "--log-level", "WARNING", *args]


def test_start_without_a_model_serves_the_shipped_one(tmp_path, capsys):
    from aggregation_server.app import create_app, shutdown
    from aggregation_server.storage import check_checkpoint
    from model.paths import SHIPPED_TOKENIZER
    app = create_app(load_settings({"data_dir": str(tmp_path / "data")}, env={}))
    try:
        client = app.test_client()
        reply = client.get("/v1/model")
        assert reply.status_code == 200
        tensors, meta = check_checkpoint(reply.data)            # expanded to float32
        training = json.loads(meta["training"])
        assert training["command"].startswith("python -m model.pretrain")
        assert training["shipped"]["evaluation"]["int8"]["top1"] > 0.15
        assert client.get("/v1/tokenizer").data == SHIPPED_TOKENIZER.read_bytes()
    finally:
        shutdown(app)
    assert main(_cli(tmp_path / "other", "--init-model", "x.safetensors")) == 2  # half a pair
    assert "--init-model and --tokenizer go together" in capsys.readouterr().err


@pytest.mark.parametrize("problem, needle", [
    ("missing", "file not found"),
    ("not_safetensors", "not a safetensors checkpoint"),
    ("other_tokenizer", "not the given tokenizer"),
    ("no_metadata", "metadata format"),
    ("nan", "non-finite"),
])
def test_bad_init_model_is_refused(tmp_path, tiny_model, capsys, problem, needle):
    checkpoint, tokenizer = tiny_model["checkpoint"], tiny_model["tokenizer"]
    bad = tmp_path / "bad.safetensors"
    tensors = load_file(checkpoint)
    from safetensors import safe_open
    with safe_open(checkpoint, "numpy") as f:
        meta = f.metadata()
    if problem == "missing":
        checkpoint = tmp_path / "nope.safetensors"
    elif problem == "not_safetensors":
        bad.write_bytes(b"hello world, not a checkpoint")
        checkpoint = bad
    elif problem == "other_tokenizer":
        save_file(tensors, bad, metadata={**meta, "tokenizer_sha256": "0" * 64})
        checkpoint = bad
    elif problem == "no_metadata":
        save_file(tensors, bad)
        checkpoint = bad
    elif problem == "nan":
        name = next(iter(tensors))
        tensors[name] = tensors[name].copy()
        tensors[name].flat[0] = np.nan
        save_file(tensors, bad, metadata=meta)
        checkpoint = bad
    code = main(_cli(tmp_path, "--init-model", str(checkpoint), "--tokenizer", str(tokenizer)))
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not list((tmp_path / "data" / "models").glob("*.safetensors"))


def test_explicit_round_settings_override_the_stored_ones_at_restart(start_server, tmp_path):
    data = tmp_path / "shared"
    first = start_server(data_dir=data, settings_round={"target_reports": 40})
    assert first.set_config(retry_after=7.0).status_code == 200
    second = start_server(data_dir=data, settings_round={"target_reports": 60})
    config = second.http.get(f"{second.url}/v1/admin/config", headers=second.admin,
                             timeout=30).json()
    assert config["target_reports"] == 60  # given explicitly at this start
    assert config["retry_after"] == 7.0  # the admin's change stands: not given explicitly
    third = start_server(data_dir=data, settings_round={})
    config = third.http.get(f"{third.url}/v1/admin/config", headers=third.admin,
                            timeout=30).json()
    assert config["target_reports"] == 60 and config["retry_after"] == 7.0
