"""Colours and sizes shared by the screens (plain Python, imported from kv rules)."""

BACKGROUND = (0.965, 0.965, 0.975, 1)
SURFACE = (1, 1, 1, 1)
TEXT = (0.12, 0.13, 0.16, 1)
MUTED = (0.42, 0.44, 0.5, 1)
ACCENT = (0.11, 0.37, 0.66, 1)
ACCENT_TEXT = (1, 1, 1, 1)
STRIP = (0.89, 0.9, 0.93, 1)
DIVIDER = (0.78, 0.8, 0.84, 1)
KEY = (1, 1, 1, 1)
KEY_SPECIAL = (0.7, 0.73, 0.78, 1)
KEY_DOWN = (0.72, 0.75, 0.8, 1)
KEYBOARD = (0.82, 0.84, 0.88, 1)
INCOGNITO = (0.3, 0.22, 0.45, 1)
DANGER = (0.75, 0.18, 0.16, 1)
STATUS = {"ok": (0.86, 0.95, 0.88, 1), "info": (0.9, 0.93, 0.98, 1),
          "warn": (1.0, 0.94, 0.8, 1), "error": (0.99, 0.86, 0.85, 1)}
BODY_SP = "16sp"
SMALL_SP = "13sp"
WIDE_DP = 760  # wider than this: the privacy panel sits beside the typing screen
