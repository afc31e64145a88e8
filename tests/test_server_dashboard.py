"""The dashboard as a person sees it: loaded in headless Chromium, screenshot checked."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--hide-scrollbars", "--window-size=1280,1500"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return found


def _rounds(server, n: int) -> None:
    for r in range(n):
        devices = [server.enrol() for _ in range(3)]
        tasks = [server.task(d) for d in devices]
        for i, (d, t) in enumerate(zip(devices, tasks)):
            body = server.update_bytes(t, seed=i, metrics={"loss": 5.0 - r - 0.1 * i,
                                                           "accuracy": 0.1 + 0.05 * r})
            assert server.upload(d, t["round_id"], body).status_code == 202


@pytest.mark.slow
def test_dashboard_renders_in_chromium(start_server, tmp_path):
    binary = chromium()
    server = start_server(round={"participation_cap": 3})
    _rounds(server, 3)
    shot = tmp_path / "dashboard.png"
    subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", server.url + "/"],
                   check=True, timeout=120, capture_output=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1500, 1280)
    non_white = (pixels.sum(axis=2) < 740).mean()
    assert non_white > 0.02, f"only {non_white:.1%} of the page is not white"
    colours = {tuple(p) for p in pixels[::4, ::4].reshape(-1, 3)}
    assert len(colours) > 50
    blue = np.abs(pixels - [0x25, 0x63, 0xEB]).sum(axis=2) < 30  # chart series colour
    assert blue.sum() > 500, "no chart lines or bars visible"
