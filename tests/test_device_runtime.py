"""The device path runs without PyTorch, `tokenizers` and `safetensors`, and buildozer.spec
asks python-for-android for exactly what it imports.

A fresh interpreter blocks those three imports with a meta-path hook, imports the Kivy app
and the device runtime, makes suggestions from a checkpoint and trains one local round;
the parent checks the answers against the PyTorch reference and the server's parser.
"""
from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from federated.wire import decode_update, tensors_from_bytes
from model.checkpoint import load_checkpoint
from model.compress import load_any
from model.paths import SHIPPED_MODEL, SHIPPED_TOKENIZER
from model.predictor import Predictor
from model.suggestion_words import SuggestionWords
from model.tokenizer import WordTokenizer

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("torch", "tokenizers", "safetensors", "wordfreq")  # wordfreq: not on the phone
TEXTS = ["how are ", "see you t", "I think "]
# python-for-android's recipes (pythonforandroid/recipes at kivy/python-for-android a608f59)
# that the spec may name, and the pure-Python packages p4a installs with pip.
RECIPES = {"python3", "kivy", "numpy", "scipy", "sqlite3", "sqlalchemy", "openssl",
           "cryptography", "cffi", "pillow", "pyjnius", "android", "setuptools", "pyopenssl"}
PURE_PYTHON = {"requests", "urllib3", "idna", "certifi", "charset-normalizer",
               "typing-extensions", "filetype", "dp-accounting", "absl-py", "attrs"}
# An imported top-level module -> the requirement that provides it.
PROVIDER = {"kivy": "kivy", "numpy": "numpy", "sqlalchemy": "sqlalchemy", "PIL": "pillow",
            "cryptography": "cryptography", "_cffi_backend": "cffi", "_openssl": "cryptography",
            "requests": "requests", "urllib3": "urllib3", "idna": "idna", "certifi": "certifi",
            "charset_normalizer": "charset-normalizer", "typing_extensions": "typing-extensions",
            "filetype": "filetype", "jnius": "pyjnius", "android": "android",
            "dp_accounting": "dp-accounting", "absl": "absl-py", "attr": "attrs",
            "scipy": "scipy", "_csparsetools": "scipy", "_cyutility": "scipy",
            "_moduleTNC": "scipy", "_ni_label": "scipy"}
NOT_PACKAGES = ("__editable__", "_cython_", "_distutils_hack", "_sysconfigdata", "cython_runtime",
                "__main__", "kivy_env", "keyboard_app", "device_model", "federated", "model")

CHILD = r"""
import importlib.abc, json, sys
BLOCKED = {blocked!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} must not be imported on the device path")

sys.meta_path.insert(0, Block())
sys.path.insert(0, {tests!r})
import kivy_env  # noqa: F401  (headless Kivy settings, before Kivy is imported)
import keyboard_app.__main__, keyboard_app.runtime, keyboard_app.ui.app  # noqa: F401
from device_model.tokenizer import DeviceTokenizer
from federated.protocol import Task
from keyboard_app.local_training import run_task
from keyboard_app.ui.backend import Backend
from keyboard_app.ui.prefs import Prefs

folder = {folder!r}
backend = Backend(folder + "/data", Prefs(), pretrained_model=folder + "/model.safetensors",
                  tokenizer_path=folder + "/tokenizer.json")
got = []
backend.open(got.append)  # what the app does at start (no server: the pre-trained model)
ready = got[0]
backend.ledger_view()  # what the privacy panel shows
shipped = []
Backend(folder + "/data-shipped", Prefs()).open(shipped.append)  # the APK's int8 model
task = Task.from_json({task_json!r})
local = run_task(task, open(folder + "/model.safetensors", "rb").read(),
                 DeviceTokenizer.load(folder + "/tokenizer.json"), {messages!r},
                 noise_stddev=0.01, seed=3)
open(folder + "/update.bin", "wb").write(local.body)
print(json.dumps({{"source": ready.source, "problem": ready.problem,
                  "suggestions": [ready.predictor.suggest(t) for t in {texts!r}],
                  "shipped": [shipped[0].predictor.suggest(t) for t in {texts!r}],
                  "modules": sorted({{m.partition(".")[0] for m in sys.modules}}
                                    - set(sys.stdlib_module_names))}}))
"""


@pytest.fixture(scope="module")
def device_run(tmp_path_factory) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import task_json
    from kivy_env import build_tiny_model
    folder = tmp_path_factory.mktemp("device")
    build_tiny_model(folder)
    messages = [f"see you later at the party number {i}" for i in range(20)]
    code = CHILD.format(blocked=set(BLOCKED), tests=str(ROOT / "tests"), folder=str(folder),
                        messages=messages, texts=TEXTS, task_json=task_json(
                            round_id=4, model_version=0,
                            train={"batch_size": 8, "lr": 0.01, "optimizer": "adam"}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "folder": folder}


def test_the_device_path_runs_with_torch_tokenizers_and_safetensors_blocked(device_run):
    assert not set(BLOCKED) & set(device_run["modules"])
    assert device_run["source"] == "pretrained", device_run["problem"]
    folder = device_run["folder"]
    tokenizer = WordTokenizer.load(folder / "tokenizer.json")  # the PyTorch reference
    # without wordfreq and with a vocabulary the shipped word list was not made for, the
    # phone suggests every vocabulary word, with corrections
    reference = Predictor(load_checkpoint(folder / "model.safetensors")[0], tokenizer,
                          words=SuggestionWords.everything(tokenizer.id_to_word),
                          corrections=True)
    assert device_run["suggestions"] == [reference.suggest(t) for t in TEXTS]
    assert all(device_run["suggestions"])


def test_the_shipped_int8_model_suggests_as_on_pytorch(device_run):
    tokenizer = WordTokenizer.load(SHIPPED_TOKENIZER)
    reference = Predictor.for_keyboard(load_any(SHIPPED_MODEL, tokenizer.sha256)[0], tokenizer)
    assert device_run["shipped"] == [reference.suggest(t) for t in TEXTS]
    assert all(len(s) == 3 for s in device_run["shipped"])


def test_the_update_trained_without_torch_is_what_the_server_accepts(device_run):
    folder = device_run["folder"]
    shapes = {k: v.shape for k, v in
              tensors_from_bytes((folder / "model.safetensors").read_bytes())[0].items()}
    update = decode_update((folder / "update.bin").read_bytes(), shapes)
    assert (update.round_id, update.num_examples) == (4, 1)  # DP: the count stays home
    assert all(np.isfinite(t).all() for t in update.tensors.values())


def _requirements() -> list[str]:
    spec = configparser.ConfigParser()
    spec.read(ROOT / "buildozer.spec")
    return [r.strip().split("==")[0].lower() for r in spec["app"]["requirements"].split(",")]


def test_buildozer_requirements_are_recipes_or_pure_python():
    requirements = _requirements()
    assert not set(requirements) - RECIPES - PURE_PYTHON
    assert not {"torch", "tokenizers", "safetensors", "psutil"} & set(requirements)


def test_buildozer_requirements_cover_every_module_the_device_path_imports(device_run):
    imported = [m for m in device_run["modules"] if not m.startswith(NOT_PACKAGES)]
    unknown = [m for m in imported if m not in PROVIDER]
    assert not unknown, f"new device-path imports {unknown}: add them to buildozer.spec, PROVIDER"
    missing = {PROVIDER[m] for m in imported} - set(_requirements())
    assert not missing
    # Android-only imports (never loaded on a desktop) must be in the spec too
    assert {"pyjnius", "android"} <= set(_requirements())
