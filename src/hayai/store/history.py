"""Run history: the `runs` table, the `Run` record and the TSV export.

Functions here take an open connection; `Store` (in `db.py`) owns the connection and its lock.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..errors import HayaiError
from .processes import process_alive

__all__ = [
    "Run",
    "RUN_KINDS",
    "RUN_STATUSES",
    "FINISHED_STATUSES",
    "iso_utc",
    "insert_run",
    "finish_run",
    "add_output",
    "set_outputs",
    "end_dead_runs",
    "get_run",
    "query_runs",
    "model_names",
    "fold",
    "history_tsv",
]

RUN_KINDS = ("generate", "sweep", "train_lora")
FINISHED_STATUSES = ("ok", "error", "interrupted")
RUN_STATUSES = ("running", *FINISHED_STATUSES)

_COLUMNS = (
    "id, kind, status, created_at, finished_at, model, model_hash, device, request, seeds, "
    "timings, peak_memory_bytes, outputs, error, events"
)


@dataclass(frozen=True)
class Run:
    """One logged run. Times are UTC ISO 8601 strings; `finished_at` is None while running."""

    id: int
    kind: str
    status: str
    created_at: str
    finished_at: str | None
    model: str
    model_hash: str | None
    device: str
    request: dict[str, Any]
    seeds: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def prompt(self) -> str:
        return self.request.get("prompt", "")


def iso_utc(moment: datetime) -> str:
    """`moment` in UTC as fixed-width ISO 8601, so stored times sort as strings.

    A naive datetime is taken as local time (Python's `astimezone` rule).
    """
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _check(value: str | None, allowed: tuple[str, ...], name: str) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def insert_run(
    conn: sqlite3.Connection,
    kind: str,
    *,
    request: dict[str, Any],
    model: str,
    model_hash: str | None,
    device: str,
    now: str,
    process: str | None = None,
) -> int:
    """Log a new run with status 'running', run by `process` (a `process_token`); return its id."""
    _check(kind, RUN_KINDS, "kind")
    cursor = conn.execute(
        "INSERT INTO runs (kind, status, created_at, model, model_hash, device, request, process) "
        "VALUES (?, 'running', ?, ?, ?, ?, ?, ?)",
        (kind, now, model, model_hash, device, _dumps(request), process),
    )
    return cursor.lastrowid


def finish_run(
    conn: sqlite3.Connection,
    run_id: int,
    *,
    status: str,
    seeds: list[int],
    timings: dict[str, float],
    peak_memory_bytes: int | None,
    outputs: list[str],
    error: str | None,
    events: list[dict[str, Any]] | None,
    now: str,
) -> None:
    """Record how a running run ended. A run is finished once; a second finish is an error."""
    _check(status, FINISHED_STATUSES, "status")
    cursor = conn.execute(
        "UPDATE runs SET status = ?, finished_at = ?, seeds = ?, timings = ?, "
        "peak_memory_bytes = ?, outputs = ?, error = ?, events = ? "
        "WHERE id = ? AND status = 'running'",
        (
            status, now, _dumps(seeds), _dumps(timings), peak_memory_bytes,
            _dumps(outputs), error, _dumps(events or []), run_id,
        ),
    )
    if cursor.rowcount == 0:
        previous = get_run(conn, run_id)  # raises if there is no such run
        raise HayaiError(f"run {run_id} is already finished (status {previous.status!r})")


def add_output(conn: sqlite3.Connection, run_id: int, path: str, seed: int) -> None:
    """Record one image of a running run as soon as it is saved, so a run killed later still lists it."""
    conn.execute(
        "UPDATE runs SET outputs = json_insert(outputs, '$[#]', ?), seeds = json_insert(seeds, '$[#]', ?) "
        "WHERE id = ? AND status = 'running'",
        (path, seed, run_id),
    )


def set_outputs(conn: sqlite3.Connection, run_id: int, outputs: list[str], event: dict) -> None:
    """Replace a run's output paths (its files moved) and log why in its events."""
    conn.execute("UPDATE runs SET outputs = ?, events = json_insert(events, '$[#]', json(?)) WHERE id = ?",
                 (json.dumps(outputs), json.dumps(event), run_id))


def end_dead_runs(conn: sqlite3.Connection, *, now: str) -> list[int]:
    """Record as 'interrupted' each 'running' run whose process has ended (killed or crashed, so it never
    said how the run ended); `finished_at` is then when this noticed. Return their ids.

    A run of another machine, or one logged before processes were recorded, stays as it is.
    """
    rows = conn.execute("SELECT id, process FROM runs WHERE status = 'running' AND process IS NOT NULL").fetchall()
    dead = [(run_id, process) for run_id, process in rows if process_alive(process) is False]
    for run_id, process in dead:
        pid = process.rsplit(":", 2)[1]
        conn.execute(
            "UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? WHERE id = ? AND status = 'running'",
            (now, f"its process (pid {pid}) ended before the run did: killed or crashed", run_id),
        )
    return [run_id for run_id, _ in dead]


def get_run(conn: sqlite3.Connection, run_id: int) -> Run:
    row = conn.execute(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise HayaiError(f"no run with id {run_id} in the history")
    return _run_from_row(row)


def query_runs(
    conn: sqlite3.Connection,
    *,
    limit: int,
    status: str | None,
    model: str | None,
    search: str | None,
    since: datetime | None,
    kind: str | None,
) -> list[Run]:
    """Runs matching every given filter, newest first. `search` needs the `hayai_fold` function."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1; got {limit}")
    _check(status, RUN_STATUSES, "status")
    _check(kind, RUN_KINDS, "kind")
    where, args = [], []
    for column, value in (("status", status), ("model", model), ("kind", kind)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if since is not None:
        where.append("created_at >= ?")
        args.append(iso_utc(since))
    if search is not None:
        where.append("instr(hayai_fold(json_extract(request, '$.prompt')), ?) > 0")
        args.append(search.casefold())
    sql = f"SELECT {_COLUMNS} FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    return [_run_from_row(row) for row in conn.execute(sql, (*args, limit))]


def model_names(conn: sqlite3.Connection, model_hashes: list[str]) -> dict[str, str]:
    """The name the newest run of each of `model_hashes` knew its model by (hashes no run used are left out)."""
    marks = ", ".join("?" * len(model_hashes))
    rows = conn.execute(f"SELECT model_hash, model FROM runs WHERE model_hash IN ({marks}) ORDER BY created_at, id",
                        model_hashes)
    return dict(rows.fetchall())  # (the newest run's row comes last, and wins)


def fold(text: Any) -> str:
    """Case-fold for search; SQLite's own `lower` only knows ASCII. Registered as `hayai_fold`."""
    return text.casefold() if isinstance(text, str) else ""


def history_tsv(runs: list[Run]) -> str:
    """Tab-separated `time, output, prompt`: a line per output file, one for a run without any.

    Tabs and line breaks inside a cell become spaces, so every line has exactly three cells.
    """
    lines = ["time\toutput\tprompt"]
    for run in runs:
        for output in run.outputs or [""]:
            cells = (run.created_at, output, run.prompt)
            lines.append("\t".join(_tsv_cell(cell) for cell in cells))
    return "\n".join(lines) + "\n"


def _tsv_cell(text: str) -> str:
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ").replace("\t", " ")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _run_from_row(row: tuple) -> Run:
    (run_id, kind, status, created_at, finished_at, model, model_hash, device,
     request, seeds, timings, peak, outputs, error, events) = row
    return Run(
        id=run_id, kind=kind, status=status, created_at=created_at, finished_at=finished_at,
        model=model, model_hash=model_hash, device=device, request=json.loads(request),
        seeds=json.loads(seeds), timings=json.loads(timings), peak_memory_bytes=peak,
        outputs=json.loads(outputs), error=error, events=json.loads(events),
    )
