"""`python -m keyboard_app [--server URL] [--enrolment-code CODE] [--data-dir DIR] [--size WxH]
[--theme light|dark]`: the keyboard app."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def default_data_dir() -> Path:
    """The app's private storage on Android, else $XDG_DATA_HOME/private-keyboard."""
    from keyboard_app import android
    if android.ON_ANDROID:
        return android.storage_dir()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "private-keyboard"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m keyboard_app", description=(
        "Private Keyboard: type with next-word suggestions from an on-device model that "
        "learns with federated learning and differential privacy."))
    parser.add_argument("--server", metavar="URL", default=None,
                        help="aggregation server, e.g. http://127.0.0.1:8080; remembered in "
                             "Settings (default: the saved URL; none: offline on the cached "
                             "model)")
    parser.add_argument("--enrolment-code", metavar="CODE", default=None,
                        help="the enrolment code the server's operator gave you; remembered "
                             "in Settings (needed to join the first time)")
    parser.add_argument("--data-dir", metavar="DIR", type=Path, default=default_data_dir(),
                        help="typing history, settings, device token and model cache "
                             "(default: %(default)s)")
    parser.add_argument("--theme", choices=("light", "dark"), default="light",
                        help="colours (default: %(default)s)")
    parser.add_argument("--size", metavar="WxH", default="400x720",
                        help="window size (default: %(default)s, phone-like)")
    args = parser.parse_args(argv)
    try:
        args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 400x720, not {args.size!r}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("KIVY_NO_ARGS", "1")  # our options, not Kivy's
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # local training on one core (NumPy)
    from kivy.config import Config
    Config.set("graphics", "width", str(args.width))
    Config.set("graphics", "height", str(args.height))
    Config.set("kivy", "exit_on_escape", "0")
    Config.set("input", "mouse", "mouse,disable_multitouch")
    from keyboard_app.ui.app import KeyboardApp
    from keyboard_app.ui.prefs import PrefsError
    try:
        app = KeyboardApp(args.data_dir, server_url=args.server, colours=args.theme,
                          enrolment_code=args.enrolment_code)
    except PrefsError as err:
        raise SystemExit(f"python -m keyboard_app: {err}") from None
    app.run()


if __name__ == "__main__":
    main()
