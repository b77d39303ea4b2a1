"""Where the committed world lives: a leaf module, so the package and its submodules can all
read it without importing each other."""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
