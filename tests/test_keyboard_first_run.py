"""A first run that just works: the app with nothing but its data folder starts on the
pre-trained model shipped in the package, suggests clean words, and corrects typos typed on
the on-screen keys. Real Kivy widgets, headless; the screenshot is the README's picture."""
import json

import pytest

import kivy_env  # noqa: E402  sets up Kivy's environment first

from model.paths import SHIPPED_DIR, SHIPPED_MODEL

kivy_env.configure_window(kivy_env.PHONE)


@pytest.fixture(scope="module")
def drv(tmp_path_factory):
    from keyboard_app.ui.app import KeyboardApp
    app = KeyboardApp(tmp_path_factory.mktemp("device"))      # no model given: the shipped one
    driver = kivy_env.Driver(app)
    driver.until(lambda: not app.loading, what="the model to load")
    yield driver
    driver.close()


def test_the_shipped_model_says_how_it_was_made():
    card = json.loads((SHIPPED_DIR / "model.json").read_text())
    assert card["command"].startswith("python -m model.pretrain")
    assert card["data"] == "public"
    figures = card["shipped"]["evaluation"]      # measured by `python -m model.ship`
    assert figures["split"] == "test" and figures["int8"]["top1"] > 0.15
    assert abs(figures["int8"]["top1"] - figures["float32"]["top1"]) < 0.002
    assert SHIPPED_MODEL.stat().st_size < 2_500_000


def test_first_run_suggests_and_corrects_on_the_shipped_model(drv):
    app = drv.app
    screen, pad = app.typing, app.typing.ids.keypad
    assert app.model_source == "pretrained" and app.status_level == "info", app.status_text
    assert len(screen.strip.suggestions) == 3                  # sentence openers at once
    screen.field.focus = True
    drv.tap_keys(pad, "running late")
    drv.tap(pad.keys()["enter"])                               # Send
    assert app.backend.history.messages() == ["Running late"]
    drv.tap_keys(pad, "dont")
    assert screen.strip.slots[1] == "Don't"                    # the standard spelling
    drv.tap(screen.strip.children[1])                          # the middle slot
    drv.tap_keys(pad, "be late, see you tomorow")
    assert screen.field.text == "Don't be late, see you tomorow"
    middle, left = screen.strip.slots[1], screen.strip.slots[0]
    assert middle == "tomorrow" and left == "tomorow"          # the typed word one tap away
    drv.tap(pad.keys()["layer:symbols"])
    assert pad.layer == "symbols"
    drv.screenshot("keyboard_first_run")                       # docs/keyboard.png
