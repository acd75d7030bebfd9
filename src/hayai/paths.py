"""Where hayai keeps its files: one user directory, overridable with `HAYAI_HOME`.

Nothing here creates a directory at import time; callers ask for a path when they need it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["hayai_home", "models_dir", "outputs_dir", "db_path", "cache_dir"]


def hayai_home() -> Path:
    """`$HAYAI_HOME`, else `~/.hayai`."""
    env = os.environ.get("HAYAI_HOME")
    return Path(env).expanduser() if env else Path.home() / ".hayai"


def models_dir() -> Path:
    """hayai's own model folder (checkpoints and diffusers folders put here are found by name)."""
    return hayai_home() / "models"


def outputs_dir() -> Path:
    """Default folder for generated images."""
    return hayai_home() / "outputs"


def cache_dir() -> Path:
    """Things hayai can rebuild at will (the placeholder model, ...)."""
    return hayai_home() / "cache"


def db_path() -> Path:
    """The SQLite store: history, file hashes, the model catalog."""
    return hayai_home() / "hayai.db"
