"""FLOP counts the planner made (hayai.memory.costs), kept so that a new process does not count again."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

__all__ = ["load", "save"]


def load(conn: sqlite3.Connection) -> dict[str, float]:
    return dict(conn.execute("SELECT key, flops FROM flop_counts"))


def save(conn: sqlite3.Connection, counts: Mapping[str, float]) -> None:
    """Add the counts not stored yet (a count never changes under its key)."""
    conn.executemany("INSERT OR IGNORE INTO flop_counts (key, flops) VALUES (?, ?)", counts.items())
