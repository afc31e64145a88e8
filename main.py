"""The Android entry point: python-for-android starts `main.py` (see buildozer.spec)."""
from keyboard_app.__main__ import main

if __name__ == "__main__":
    main([])
