"""The keyboard app's responsiveness: start to first suggestion, and per-keystroke time.

    .venv/bin/python benchmarks/app_latency.py [--keystrokes 2000] [--starts 3] [--screenshot PNG]

Each run is a fresh process that opens the app (phone-sized window; offscreen Mesa when
there is no display) on the pre-trained model in .cache/pretrained, or on a randomly
initialised default-size model when there is none (latency does not depend on the
weights). Reported:
- start: process launch to the first frame that shows suggestions (empty field), median
  of --starts runs, with where the time goes (imports, first frame, model loaded in the
  background thread), at Kivy's usual 60 frames per second;
- per keystroke, over `test` text typed character by character into the running app:
  `suggest`: the app's keystroke handler (predictor call from the cached state and strip
  update), and `frame`: keystroke event to the end of the frame that draws the new
  suggestions (layout, text rendering and drawing included, frame limiter off; with
  software OpenGL this is mostly rasterisation by the CPU, not the model).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def model_files(folder: Path) -> tuple[Path, Path, str]:
    """(checkpoint, tokenizer, description): the pre-trained model or a random default-size one."""
    from model.paths import PRETRAINED_MODEL, TOKENIZER_PATH
    if PRETRAINED_MODEL.is_file() and TOKENIZER_PATH.is_file():
        return PRETRAINED_MODEL, TOKENIZER_PATH, f"pre-trained {PRETRAINED_MODEL}"
    import torch

    from data import load_split
    from model.checkpoint import CheckpointMeta, save_checkpoint
    from model.config import ModelConfig
    from model.lstm import NextWordLSTM
    from model.tokenizer import WordTokenizer
    tokenizer = WordTokenizer.build(m for d in load_split("public") for m in d.messages)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size)
    save_checkpoint(folder / "model.safetensors", NextWordLSTM(config),
                    CheckpointMeta(config, tokenizer.sha256, 0, {"benchmark": "random init"}))
    tokenizer.save(folder / "tokenizer.json")
    return (folder / "model.safetensors", folder / "tokenizer.json",
            "randomly initialised default-size model (no pre-trained model found)")


def child(args: argparse.Namespace) -> None:
    """One app process: time to first suggestion, then (optionally) keystrokes."""
    marks = {}
    os.environ.setdefault("KIVY_NO_ARGS", "1")
    os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
    os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")
    from kivy.config import Config
    Config.set("graphics", "width", "400")
    Config.set("graphics", "height", "720")
    from kivy.base import EventLoop
    from kivy.clock import Clock
    from kivy.core.window import Window

    from keyboard_app.ui.app import KeyboardApp
    marks["imported"] = time.time()
    app = KeyboardApp(args.data_dir, pretrained_model=args.model, tokenizer_path=args.tokenizer)
    EventLoop.ensure_window()
    app._run_prepare()
    EventLoop.idle()
    marks["window"] = time.time()
    while not app.typing.strip.suggestions:
        EventLoop.idle()
        if app.predictor is not None and "model" not in marks:
            marks["model"] = time.time()
    EventLoop.idle()  # the frame that draws them
    marks["first_suggestion"] = time.time()
    result = {"marks": marks}
    if args.keystrokes:
        Clock._max_fps = 0  # measure work per keystroke, not the 60 fps frame limiter
        result["keystrokes"] = keystrokes(app, Window, EventLoop, args.keystrokes)
    if args.screenshot:
        screenshot(app, Window, EventLoop, args.screenshot)
    app.dispatch("on_stop")
    print("RESULT " + json.dumps(result), flush=True)


def keystrokes(app, window, loop, count: int, warmup: int = 100) -> dict:
    """Type `test` messages into the app; per keystroke: handler time and frame time."""
    import numpy as np
    import torch

    from data import load_split
    torch.set_num_threads(1)
    screen = app.typing
    handler, inner = [], screen.refresh_suggestions

    def timed(*a):
        start = time.perf_counter()
        inner(*a)
        handler.append(time.perf_counter() - start)
    screen.refresh_suggestions = timed  # the screen's trigger looks it up on every call
    screen.field.focus = True
    frames, per_key = [], []
    messages = (m for d in load_split("test") for m in d.messages)
    while len(frames) < count + warmup:
        for char in next(messages):
            done, start = len(handler), time.perf_counter()
            window.dispatch("on_textinput", char)
            loop.idle()
            frames.append(time.perf_counter() - start)
            per_key.append(sum(handler[done:]))
        screen.field.text = ""  # next message (not sent: no history writes)
        loop.idle()

    def stats(xs):
        ms = np.array(xs[warmup:]) * 1000
        return {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
                "n": int(ms.size)}
    return {"suggest": stats(per_key), "frame": stats(frames)}


def screenshot(app, window, loop, path: Path) -> None:
    """A short conversation typed into the app, saved as a PNG (for the README)."""
    screen = app.typing
    screen.field.text = ""
    for message in ("Are you coming to the party tonight?", "I think so", "What time"):
        for char in message:
            window.dispatch("on_textinput", char)
            loop.idle()
        screen.send()
    for char in "See you th":
        window.dispatch("on_textinput", char)
        loop.idle()
    for _ in range(3):
        loop.idle()
    app.root.export_to_png(str(path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keystrokes", type=int, default=2000)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--screenshot", type=Path, help="also save the app (first run) as PNG")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    from model.evaluate import machine
    info = machine()
    with tempfile.TemporaryDirectory(prefix="app-latency-") as tmp:
        model, tokenizer, source = model_files(Path(tmp))
        runs = []
        for i in range(args.starts):
            cmd = [sys.executable, __file__, "--child", "--model", str(model), "--tokenizer",
                   str(tokenizer), "--data-dir", str(Path(tmp) / f"device{i}"),
                   "--keystrokes", str(args.keystrokes if i == 0 else 0)]
            if args.screenshot and i == 0:
                cmd += ["--screenshot", str(args.screenshot.resolve())]
            launched = time.time()
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
            result = json.loads(line[len("RESULT "):])
            result["marks"] = {k: v - launched for k, v in result["marks"].items()}
            runs.append(result)
    print(f"machine: nproc={info['nproc']}, cpu={info['cpu']}, torch {info['torch']}; load "
          f"average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"model: {source}")
    starts = sorted(r["marks"]["first_suggestion"] for r in runs)
    print(f"start to first suggestion on screen: median {starts[len(starts) // 2]:.2f} s over "
          f"{len(runs)} starts (all: {', '.join(f'{s:.2f}' for s in starts)})")
    for i, r in enumerate(runs):
        m = r["marks"]
        print(f"  run {i}: imports {m['imported']:.2f} s, window {m['window']:.2f} s, model "
              f"ready {m.get('model', m['first_suggestion']):.2f} s, first suggestion drawn "
              f"{m['first_suggestion']:.2f} s")
    k = runs[0].get("keystrokes")
    if k:
        print(f"per keystroke over {k['suggest']['n']} keystrokes of test text "
              f"(phone-size window):")
        print(f"  suggestion handler (predictor + strip update): median "
              f"{k['suggest']['median_ms']:.2f} ms, p99 {k['suggest']['p99_ms']:.2f} ms")
        print(f"  keystroke to frame drawn (incl. rendering):    median "
              f"{k['frame']['median_ms']:.2f} ms, p99 {k['frame']['p99_ms']:.2f} ms")
    print("JSON " + json.dumps({"machine": info, "model": source, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
