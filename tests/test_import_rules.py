"""The import rules of pyproject.toml's [tool.importlinter], checked with `lint-imports`:
the device never imports the server, the server neither the device nor Kivy, and
`federated`, `model` and `data` import nothing above them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["fleet", "keyboard_app", "aggregation_server", "privacy_audit", "federated",
            "model", "device_model", "data"]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(exe), "--no-cache"], cwd=root, env=env, text=True,
                          capture_output=True, timeout=120)


def test_the_project_keeps_its_import_rules() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_device_module_importing_the_server_breaks_the_rules(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "model" / "leak.py").write_text("import aggregation_server.rounds\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "model.leak" in result.stdout
