"""The planner's memory: the strategy that last ran to the end for (model, device, size, batch)."""

from __future__ import annotations

import json
import sqlite3

__all__ = ["remember", "recall"]


def remember(conn: sqlite3.Connection, key: tuple[str, str, int, int, int], strategy: dict, *, now: str) -> None:
    conn.execute(
        "INSERT INTO strategy_memory (model_hash, device_key, width, height, batch_size, strategy, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model_hash, device_key, width, height, batch_size) "
        "DO UPDATE SET strategy = excluded.strategy, updated_at = excluded.updated_at",
        (*key, json.dumps(strategy, sort_keys=True), now),
    )


def recall(conn: sqlite3.Connection, key: tuple[str, str, int, int, int]) -> dict | None:
    row = conn.execute(
        "SELECT strategy FROM strategy_memory WHERE model_hash = ? AND device_key = ? AND width = ? "
        "AND height = ? AND batch_size = ?",
        key,
    ).fetchone()
    return json.loads(row[0]) if row else None
