"""The Kivy user interface of the keyboard app (the only package that imports Kivy).

`app.KeyboardApp` is the App; `typing_screen`, `strip`, `privacy` and `settings_screen` hold
one screen or widget each; `editing` and `prefs` are plain Python and testable without Kivy.
"""
