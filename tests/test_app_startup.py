"""The app starts and lets the user type without a server, and without any model at all."""
import socket

import pytest

import kivy_env  # noqa: E402  sets up Kivy's environment first

kivy_env.configure_window(kivy_env.PHONE)


def start(data_dir, **kwargs):
    from keyboard_app.ui.app import KeyboardApp
    driver = kivy_env.Driver(KeyboardApp(data_dir, **kwargs))
    driver.until(lambda: not driver.app.loading, what="the model loader to finish")
    return driver


@pytest.mark.parametrize("case", ["missing", "corrupt"])
def test_without_any_model_it_says_how_to_get_one_and_still_types(tmp_path, case):
    model, tokenizer = tmp_path / "model.safetensors", tmp_path / "tokenizer.json"
    if case == "corrupt":
        _, good_tokenizer = kivy_env.tiny_model()
        tokenizer.write_text(good_tokenizer.read_text())
        model.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    drv = start(tmp_path / "device", pretrained_model=model, tokenizer_path=tokenizer)
    try:
        app, screen = drv.app, drv.app.typing
        assert app.predictor is None and app.status_level == "error"
        assert "could not be loaded" in app.status_text and "still type" in app.status_text
        for jargon in ("python", "model.safetensors", "Error", "`"):  # plain words only
            assert jargon not in app.status_text
        screen.field.focus = True
        drv.type("no model here")
        assert screen.field.text == "no model here" and screen.strip.suggestions == []
        drv.key(13)
        assert app.backend.history.messages() == ["no model here"]
        drv.screenshot(f"app_no_model_{case}")
    finally:
        drv.close()


def test_with_an_unreachable_server_it_works_on_the_cached_model(tmp_path):
    from keyboard_app.client import SyncClient, make_retry
    from keyboard_app.ui.prefs import load_prefs
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    model, tokenizer = kivy_env.tiny_model()
    data_dir = tmp_path / "device"
    client = SyncClient(url, data_dir, retry=make_retry(retries=0))
    drv = start(data_dir, server_url=url, pretrained_model=model, tokenizer_path=tokenizer,
                runtime_options={"client": client})
    try:
        app, screen = drv.app, drv.app.typing
        assert app.model_source == "pretrained" and app.predictor is not None
        drv.until(lambda: "unreachable" in app.status_text, what="the offline status")
        assert "cached model v0" in app.status_text and app.status_level == "warn"
        screen.field.focus = True
        drv.type("are you ")
        assert len(screen.strip.suggestions) == 3
        drv.screenshot("app_server_unreachable")
        assert load_prefs(data_dir)[0].server_url == url       # --server is remembered
    finally:
        drv.close()
