"""Models shipped inside the package: the demo model's diffusers folder lives here (package data)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUILTIN_MODEL", "BUILTIN_MODEL_NAME"]

BUILTIN_MODEL_NAME = "hayai-shapes"
BUILTIN_MODEL = Path(__file__).resolve().parent / BUILTIN_MODEL_NAME
"""The built-in demo model (trained by `scripts/train_demo_model.py`, see `hayai.demo`)."""
