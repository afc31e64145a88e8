"""Colours and sizes shared by the screens (plain Python, imported from kv rules).

Two palettes, light and dark: `use(name)` before the app builds its widgets (kv rules read
these names when a widget is made).
"""

LIGHT = {
    "BACKGROUND": (0.965, 0.965, 0.975, 1), "SURFACE": (1, 1, 1, 1),
    "TEXT": (0.12, 0.13, 0.16, 1), "MUTED": (0.42, 0.44, 0.5, 1),
    "ACCENT": (0.11, 0.37, 0.66, 1), "ACCENT_TEXT": (1, 1, 1, 1),
    "STRIP": (0.89, 0.9, 0.93, 1), "DIVIDER": (0.78, 0.8, 0.84, 1),
    "KEY": (1, 1, 1, 1), "KEY_SPECIAL": (0.7, 0.73, 0.78, 1), "KEY_DOWN": (0.72, 0.75, 0.8, 1),
    "KEYBOARD": (0.82, 0.84, 0.88, 1), "INCOGNITO": (0.3, 0.22, 0.45, 1),
    "DANGER": (0.75, 0.18, 0.16, 1), "BUBBLE": (0.86, 0.86, 0.9, 1),
    "FIELD": (1, 1, 1, 1), "HINT": (0.5, 0.52, 0.57, 1),
    "STATUS": {"ok": (0.86, 0.95, 0.88, 1), "info": (0.9, 0.93, 0.98, 1),
               "warn": (1.0, 0.94, 0.8, 1), "error": (0.99, 0.86, 0.85, 1)},
}
DARK = {
    "BACKGROUND": (0.09, 0.1, 0.12, 1), "SURFACE": (0.14, 0.15, 0.18, 1),
    "TEXT": (0.92, 0.93, 0.95, 1), "MUTED": (0.64, 0.67, 0.72, 1),
    "ACCENT": (0.2, 0.45, 0.78, 1), "ACCENT_TEXT": (1, 1, 1, 1),
    "STRIP": (0.16, 0.17, 0.2, 1), "DIVIDER": (0.32, 0.34, 0.38, 1),
    "KEY": (0.27, 0.28, 0.32, 1), "KEY_SPECIAL": (0.19, 0.2, 0.23, 1),
    "KEY_DOWN": (0.4, 0.42, 0.48, 1), "KEYBOARD": (0.12, 0.13, 0.15, 1),
    "INCOGNITO": (0.47, 0.36, 0.68, 1), "DANGER": (0.8, 0.25, 0.22, 1),
    "BUBBLE": (0.23, 0.24, 0.28, 1), "FIELD": (0.18, 0.19, 0.22, 1),
    "HINT": (0.55, 0.58, 0.63, 1),
    "STATUS": {"ok": (0.13, 0.27, 0.17, 1), "info": (0.14, 0.2, 0.3, 1),
               "warn": (0.33, 0.27, 0.1, 1), "error": (0.36, 0.15, 0.14, 1)},
}
PALETTES = {"light": LIGHT, "dark": DARK}
NAME = "light"
BODY_SP = "16sp"
SMALL_SP = "13sp"
WIDE_DP = 760  # wider than this: the privacy panel sits beside the typing screen


def use(name: str) -> None:
    """Switch the palette ("light" or "dark") for the widgets made from now on."""
    global NAME
    globals().update(PALETTES[name])
    NAME = name


use("light")
