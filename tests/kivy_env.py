"""Headless Kivy for the app tests: environment, a tiny model, and an app driver.

Import this module before anything imports Kivy. SDL renders offscreen with Mesa (no X
server); one Window serves every app of the test process, one app at a time.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_KIVY_HOME = tempfile.mkdtemp(prefix="kivy-home-")
for _key, _value in {"KIVY_NO_ARGS": "1", "KIVY_NO_CONSOLELOG": "1", "KIVY_NO_FILELOG": "1",
                     "KIVY_LOG_MODE": "PYTHON",
                     "KIVY_USE_DEFAULTCONFIG": "1", "KIVY_HOME": _KIVY_HOME,
                     "KIVY_CLIPBOARD": "sdl2", "SDL_AUDIODRIVER": "dummy"}.items():
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
PHONE = (400, 720)
WIDE = (1280, 720)


def configure_window(size: tuple[int, int] = PHONE) -> None:
    """Window size and no stray input providers; call before kivy.core.window is imported."""
    from kivy.config import Config
    Config.set("graphics", "width", str(size[0]))
    Config.set("graphics", "height", str(size[1]))
    Config.set("kivy", "exit_on_escape", "0")
    for name, _ in Config.items("input"):
        Config.remove_option("input", name)


def build_tiny_model(folder: Path, messages: int = 400, version: int = 0) -> tuple[Path, Path]:
    """A tokenizer and a briefly trained tiny LSTM from public messages; (model, tokenizer)."""
    import torch

    from data import load_split
    from model.checkpoint import CheckpointMeta, save_checkpoint
    from model.config import ModelConfig
    from model.lstm import NextWordLSTM
    from model.tokenizer import WordTokenizer
    from model.train import TrainConfig, train

    torch.set_num_threads(1)
    texts = [m for device in load_split("public") for m in device.messages][:messages]
    tokenizer = WordTokenizer.build(texts, vocab_size=500)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, embed_dim=16, hidden_size=32)
    torch.manual_seed(0)
    model = NextWordLSTM(config)
    train(model, tokenizer.encode_messages(texts),
          TrainConfig(epochs=3, batch_size=16, lr=0.02, seed=0, threads=1), progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    model_path, tokenizer_path = folder / "model.safetensors", folder / "tokenizer.json"
    save_checkpoint(model_path, model, CheckpointMeta(config, tokenizer.sha256, version,
                                                      {"test": "tiny"}))
    tokenizer.save(tokenizer_path)
    return model_path, tokenizer_path


_TINY: dict[int, tuple[Path, Path]] = {}


def tiny_model(version: int = 0) -> tuple[Path, Path]:
    """build_tiny_model, once per test process (in a temporary folder)."""
    if version not in _TINY:
        _TINY[version] = build_tiny_model(Path(tempfile.mkdtemp(prefix="tiny-model-")),
                                          version=version)
    return _TINY[version]


def start_app(folder: Path) -> "Driver":
    """A KeyboardApp on the tiny test model with its data in `folder`, its model loaded."""
    from keyboard_app.ui.app import KeyboardApp
    model, tokenizer = tiny_model()
    driver = Driver(KeyboardApp(folder, pretrained_model=model, tokenizer_path=tokenizer))
    driver.until(lambda: driver.app.predictor is not None, what="the model to load")
    return driver


def fresh_typing_screen(driver: "Driver", focus: bool = True):
    """The typing screen, empty, on its letters layer without caps lock, not incognito, no
    password field (focused unless `focus` is False)."""
    app = driver.app
    app.show("typing")
    app.set_incognito(False)
    app.typing.password_mode = False
    pad = app.typing.ids.keypad
    pad.caps_lock = False
    pad.layer = "letters"
    app.typing.field.text = ""
    app.typing.field.focus = focus
    driver.frames(2)
    return app.typing


class Driver:
    """Runs one KeyboardApp inside the test process and drives it like a user would."""

    def __init__(self, app) -> None:
        from kivy.base import EventLoop
        from kivy.core.window import Window
        self.app, self.window, self.loop = app, Window, EventLoop
        EventLoop.ensure_window()
        for child in Window.children[:]:
            Window.remove_widget(child)
        app._run_prepare()
        self.frames(3)

    def frames(self, n: int = 1) -> None:
        """Run n frames of the event loop (clock, input, drawing)."""
        for _ in range(n):
            self.loop.idle()

    def until(self, condition: Callable[[], bool], timeout: float = 120.0,
              what: str = "") -> None:
        """Run frames until `condition()` holds; fail after `timeout` seconds (a ceiling for
        busy machines, not a speed requirement). Kivy's clock paces the frames (maxfps)."""
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what or condition}")
            self.frames()

    def type(self, text: str) -> None:
        """Type into the focused field, one keystroke (and one frame) per character."""
        for char in text:
            if char == "\b":
                self.key(8, "backspace")
            else:
                self.window.dispatch("on_textinput", char)
            self.frames()

    def key(self, key: int, codepoint: str = "", modifiers: list[str] | None = None) -> None:
        """A key press and release (e.g. 13 Enter, 8 Backspace, Alt+'1')."""
        self.window.dispatch("on_key_down", key, 0, codepoint, modifiers or [])
        self.window.dispatch("on_key_up", key, 0)
        self.frames()

    def tap(self, widget) -> None:
        """A finger down and up on the middle of `widget`."""
        from kivy.tests.common import UnitTestTouch
        self.frames(2)  # layout first, so that the widget is where it is drawn
        x, y = widget.to_window(*widget.center)
        touch = UnitTestTouch(x, y)
        touch.touch_down()
        self.frames()
        touch.touch_up()
        self.frames(2)

    def tap_keys(self, pad, text: str) -> None:
        """Type `text` on the on-screen KeyPad `pad` only: switching layers, Shift for a
        capital the keyboard does not make by itself."""
        for char in text:
            self._to_layer(pad, _layer_of(pad, char))
            if char.isalpha() and char.isupper() and not (pad.shift or pad.caps_lock):
                self.tap(pad.keys()["shift"])
            self.tap(pad.keys()[char.lower()])

    def _to_layer(self, pad, layer: str) -> None:
        for _ in range(3):
            if pad.layer == layer:
                return
            keys = pad.keys()
            if "layer:" + layer in keys:
                self.tap(keys["layer:" + layer])
            else:  # letters <-> more goes through the symbols
                self.tap(keys["layer:symbols" if "layer:symbols" in keys else "layer:letters"])
        assert pad.layer == layer

    def screenshot(self, name: str, widget=None) -> Path:
        """Save the window (or a widget) as test-artifacts/<name>.png; fail if it is blank."""
        self.frames(2)
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        if widget is self.window:  # the whole window, popups included
            taken = self.window.screenshot(str(ARTIFACTS / f"{name}-.png"))
            os.replace(taken, path)
        else:
            (widget or self.app.root).export_to_png(str(path))
        assert_not_blank(path)
        return path

    def close(self) -> None:
        """Stop the app (and its runtime) without closing the shared window."""
        self.app.dispatch("on_stop")
        for child in self.window.children[:]:
            self.window.remove_widget(child)
        from kivy.app import App
        App._running_app = None
        self.frames(2)


def _layer_of(pad, char: str) -> str:
    """The key pad layer with a key for `char` (the current one for , . and space)."""
    from keyboard_app.ui.keys import LAYERS
    if char in ", .":
        return pad.layer
    for layer, rows in LAYERS.items():
        if any(char.lower() in row for row in rows):
            return layer
    raise AssertionError(f"no key types {char!r}")


def assert_not_blank(path: Path, min_std: float = 10.0) -> None:
    """The PNG holds a real picture: its pixel values vary (a blank frame has std ~0)."""
    import numpy as np
    from kivy.core.image import Image as CoreImage
    image = CoreImage(str(path), keep_data=True)
    data = image.image._data[0]
    pixels = np.frombuffer(data.data, dtype=np.uint8)
    assert image.width > 100 and image.height > 100, f"{path}: only {image.size} pixels"
    assert pixels.std() > min_std, f"{path}: blank image (pixel std {pixels.std():.1f})"
