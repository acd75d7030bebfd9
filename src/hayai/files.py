"""Small file chores in one place: a JSON file replaced whole, the bytes a file or folder takes."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

__all__ = ["replace_json", "size_bytes"]


def replace_json(path: Path, data, **dumps) -> None:
    """Write `data` as JSON to `path` (UTF-8, `dumps` passed to `json.dumps`) through a temporary file beside it
    and `os.replace`: a process reading `path` at the same time gets the old file or the new, never half."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        temp.write_text(json.dumps(data, **dumps) + "\n", encoding="utf-8")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def size_bytes(path: Path) -> int:
    """The bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
