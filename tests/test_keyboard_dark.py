"""The keyboard in the dark palette at phone and desktop sizes, after resizes: real Kivy
widgets, headless (tests/kivy_env.py); screenshots in test-artifacts/."""
import pytest

import kivy_env  # noqa: E402  sets up Kivy's environment first

kivy_env.configure_window(kivy_env.PHONE)


@pytest.fixture(scope="module")
def drv(tmp_path_factory):
    from keyboard_app.ui import theme
    from keyboard_app.ui.app import KeyboardApp
    model, tokenizer = kivy_env.tiny_model()
    app = KeyboardApp(tmp_path_factory.mktemp("device"), pretrained_model=model,
                      tokenizer_path=tokenizer, colours="dark")
    driver = kivy_env.Driver(app)
    driver.until(lambda: app.predictor is not None, what="the model to load")
    yield driver
    driver.close()
    theme.use("light")


@pytest.mark.parametrize("size", [(360, 640), (1280, 720)])
def test_dark_layout_holds_after_resizes(drv, size):
    from keyboard_app.ui import theme
    app, window = drv.app, drv.window
    screen, pad = app.typing, app.typing.ids.keypad
    assert theme.NAME == "dark" and tuple(app.root.fill) == theme.DARK["BACKGROUND"]
    assert tuple(screen.field.background_color) == theme.DARK["FIELD"]
    try:
        for step in (size, (320, 560), size):
            window.size = step
            drv.frames(4)
        screen.field.text = ""
        screen.field.focus = True
        drv.frames(2)
        if app.wide:  # a desktop window: no on-screen keys, the computer's keyboard
            assert pad.height == 0 and pad.disabled
            drv.type("See you at 5?")
        else:
            drv.tap_keys(pad, "see you at 5?")
        assert screen.field.text == "See you at 5?"
        for toggle in (screen.ids.incognito, screen.ids.password):
            assert toggle.width >= toggle.texture_size[0]
            assert toggle.texture_size[1] < 1.6 * toggle.font_size
        drv.screenshot(f"keyboard_dark_{size[0]}x{size[1]}")
    finally:
        window.size = kivy_env.PHONE
        drv.frames(3)
