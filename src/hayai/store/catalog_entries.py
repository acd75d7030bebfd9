"""The user's model catalog registrations: single model files/folders, or folders to scan.

Only the registrations live here; `hayai.models` decides what a registered path contains.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CatalogEntry", "CATALOG_KINDS", "add_entry", "remove_entry", "list_entries"]

CATALOG_KINDS = ("model", "folder")


@dataclass(frozen=True)
class CatalogEntry:
    """A path the user added: `kind` 'model' (one model) or 'folder' (scan it for models)."""

    path: Path
    kind: str
    added_at: str  # UTC ISO 8601


def _resolved(path: Path) -> str:
    return str(Path(path).expanduser().resolve())


def add_entry(conn: sqlite3.Connection, path: Path, kind: str, *, now: str) -> bool:
    """Register the resolved `path`; False if it is already registered (its kind is kept)."""
    if kind not in CATALOG_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CATALOG_KINDS)}; got {kind!r}")
    cursor = conn.execute(
        "INSERT INTO catalog_entries (path, kind, added_at) VALUES (?, ?, ?) "
        "ON CONFLICT (path) DO NOTHING",
        (_resolved(path), kind, now),
    )
    return cursor.rowcount == 1


def remove_entry(conn: sqlite3.Connection, path: Path) -> bool:
    """Forget the resolved `path`; False if it was not registered."""
    cursor = conn.execute("DELETE FROM catalog_entries WHERE path = ?", (_resolved(path),))
    return cursor.rowcount == 1


def list_entries(conn: sqlite3.Connection) -> list[CatalogEntry]:
    """Every registration, oldest first."""
    rows = conn.execute("SELECT path, kind, added_at FROM catalog_entries ORDER BY added_at, path")
    return [CatalogEntry(Path(path), kind, added_at) for path, kind, added_at in rows]
