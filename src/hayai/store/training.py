"""LoRA training runs: the `training_runs` and `training_metrics` tables (migration 3).

A training run is also a row of `runs` (kind 'train_lora': status, timings, peak memory, outputs,
errors); these tables add what only training has: the run folder, the step reached, and the loss
curves. Functions take an open connection; `Store` owns it and its lock.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

__all__ = ["METRICS", "TrainingRun", "get_training_run", "insert_training_run", "list_training_runs",
           "metrics", "record_metrics", "update_training_run"]

METRICS = ("loss", "val_loss", "lr")


@dataclass(frozen=True)
class TrainingRun:
    run_id: int
    name: str
    run_dir: str
    dataset: str
    family: str
    total_steps: int
    resumed_from: int | None
    last_step: int
    lora_path: str | None
    config: dict[str, Any]


_COLUMNS = "run_id, name, run_dir, dataset, family, total_steps, resumed_from, last_step, lora_path, config"


def insert_training_run(conn: sqlite3.Connection, run_id: int, *, name: str, run_dir: str, dataset: str, family: str,
                        total_steps: int, resumed_from: int | None, config: dict[str, Any]) -> None:
    conn.execute(
        f"INSERT INTO training_runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
        (run_id, name, run_dir, dataset, family, total_steps, resumed_from, resumed_from or 0,
         json.dumps(config, ensure_ascii=False, sort_keys=True)),
    )


def update_training_run(conn: sqlite3.Connection, run_id: int, *, last_step: int, lora_path: str | None = None) -> None:
    conn.execute(
        "UPDATE training_runs SET last_step = ?, lora_path = COALESCE(?, lora_path) WHERE run_id = ?",
        (last_step, lora_path, run_id),
    )


def record_metrics(conn: sqlite3.Connection, run_id: int, rows: list[tuple[int, str, float]]) -> None:
    """(step, name, value) rows; a value logged again for the same step replaces the old one."""
    for _, name, _ in rows:
        if name not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {name!r}")
    conn.executemany(
        "INSERT INTO training_metrics (run_id, step, name, value) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (run_id, step, name) DO UPDATE SET value = excluded.value",
        [(run_id, step, name, float(value)) for step, name, value in rows],
    )


def _row(row: tuple) -> TrainingRun:
    *head, config = row
    return TrainingRun(*head, config=json.loads(config))


def get_training_run(conn: sqlite3.Connection, run_id: int) -> TrainingRun | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM training_runs WHERE run_id = ?", (run_id,)).fetchone()
    return _row(row) if row else None


def list_training_runs(conn: sqlite3.Connection, name: str | None = None) -> list[TrainingRun]:
    sql = f"SELECT {_COLUMNS} FROM training_runs"
    args: tuple = ()
    if name is not None:
        sql += " WHERE name = ?"
        args = (name,)
    return [_row(row) for row in conn.execute(sql + " ORDER BY run_id DESC", args)]


def metrics(conn: sqlite3.Connection, run_id: int, name: str) -> list[tuple[int, float]]:
    rows = conn.execute("SELECT step, value FROM training_metrics WHERE run_id = ? AND name = ? ORDER BY step",
                        (run_id, name))
    return [(step, value) for step, value in rows]
