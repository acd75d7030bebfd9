"""The server's job queue: the `jobs` table and the `Job` record.

A job is work for the server's worker (a generation request, a sweep, a LoRA training run), waiting or
done. It lives in SQLite, not in memory, so `kill -9` of the server loses nothing: on the next start every
job that was running is queued again (`requeue_running`) and runs again (a generation from the start
with the seeds drawn when it was submitted; a sweep or a training run resumes where it got to).
Order: higher `priority` first, then submission order. An idempotency key makes a client's retry find
the job it already made instead of making a second one: the retry must send what the first call sent
(`submitted_hash`, the hash of the client's own request, before the server drew seeds).

Functions here take an open connection; `Store` (in `db.py`) owns the connection and its lock.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import HayaiError

__all__ = ["Job", "JOB_KINDS", "JOB_STATUSES", "FINISHED_JOB_STATUSES", "IdempotencyConflict", "insert_job", "claim_next",
           "finish_job", "get_job", "list_jobs", "count_jobs", "queue_position", "cancel_queued", "requeue_running", "set_run_id"]

FINISHED_JOB_STATUSES = ("done", "error", "interrupted", "cancelled")
JOB_STATUSES = ("queued", "running", *FINISHED_JOB_STATUSES)

JOB_KINDS = ("generate", "sweep", "explore", "train")

_COLUMNS = ("id, kind, api, status, priority, request, options, idempotency_key, created_at, started_at, finished_at, "
            "attempts, run_id, result, error, seq")


class IdempotencyConflict(HayaiError):
    """A key already names a job with another request."""


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    api: str
    status: str
    priority: int
    request: dict[str, Any]
    options: dict[str, Any]
    idempotency_key: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    run_id: int | None
    result: dict[str, Any] | None
    error: str | None
    seq: int

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_JOB_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "api": self.api, "status": self.status, "priority": self.priority, "request": self.request,
            "options": self.options, "idempotency_key": self.idempotency_key, "created_at": self.created_at,
            "started_at": self.started_at, "finished_at": self.finished_at, "attempts": self.attempts,
            "run_id": self.run_id, "result": self.result, "error": self.error,
        }


def insert_job(conn: sqlite3.Connection, *, kind: str, api: str, request: dict, options: dict, priority: int,
               idempotency_key: str | None, submitted: Any, now: str) -> tuple[Job, bool]:
    """Queue a job; (job, True). With a key a job was already made with: (that job, False) if `submitted`
    (what the client sent) is the same, else IdempotencyConflict."""
    if kind not in JOB_KINDS:
        raise ValueError(f"kind={kind!r} must be one of {JOB_KINDS}")
    submitted_hash = hashlib.sha256(_dumps(submitted).encode()).hexdigest()
    if idempotency_key is not None:
        existing = _by_key(conn, idempotency_key)
        if existing is not None:
            return _same_or_conflict(conn, existing, submitted_hash), False
    job_id = uuid.uuid4().hex
    try:
        conn.execute(
            "INSERT INTO jobs (id, kind, api, status, priority, request, options, idempotency_key, submitted_hash, "
            "created_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
            (job_id, kind, api, priority, _dumps(request), _dumps(options), idempotency_key, submitted_hash, now),
        )
    except sqlite3.IntegrityError:  # another connection inserted the same key between the check and here
        existing = _by_key(conn, idempotency_key) if idempotency_key is not None else None
        if existing is None:
            raise
        return _same_or_conflict(conn, existing, submitted_hash), False
    return get_job(conn, job_id), True


def _same_or_conflict(conn: sqlite3.Connection, job: Job, submitted_hash: str) -> Job:
    stored = conn.execute("SELECT submitted_hash FROM jobs WHERE id = ?", (job.id,)).fetchone()[0]
    if stored != submitted_hash:
        raise IdempotencyConflict(f"idempotency key {job.idempotency_key!r} already names job {job.id} with another "
                                  "request; use a new key for a new request")
    return job


def _by_key(conn: sqlite3.Connection, key: str) -> Job | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
    return _job(row) if row else None


def claim_next(conn: sqlite3.Connection, *, now: str) -> Job | None:
    """Mark the next queued job running (one statement, so two workers never take the same job)."""
    row = conn.execute(
        f"UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1, error = NULL "
        f"WHERE seq = (SELECT seq FROM jobs WHERE status = 'queued' ORDER BY priority DESC, seq LIMIT 1) "
        f"RETURNING {_COLUMNS}",
        (now,),
    ).fetchone()
    return _job(row) if row else None


def set_run_id(conn: sqlite3.Connection, job_id: str, run_id: int) -> None:
    conn.execute("UPDATE jobs SET run_id = ? WHERE id = ?", (run_id, job_id))


def finish_job(conn: sqlite3.Connection, job_id: str, *, status: str, result: dict | None, error: str | None,
               now: str) -> None:
    if status not in FINISHED_JOB_STATUSES:
        raise ValueError(f"status={status!r} is not a finished status ({', '.join(FINISHED_JOB_STATUSES)})")
    conn.execute("UPDATE jobs SET status = ?, result = ?, error = ?, finished_at = ? WHERE id = ?",
                 (status, None if result is None else _dumps(result), error, now, job_id))


def cancel_queued(conn: sqlite3.Connection, job_id: str, *, now: str, reason: str = "cancelled") -> bool:
    """Cancel a job that has not started; False if it is not queued (running, finished, or unknown)."""
    cursor = conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = ?, error = ? "
                          "WHERE id = ? AND status = 'queued'", (now, reason, job_id))
    return cursor.rowcount == 1


def requeue_running(conn: sqlite3.Connection) -> list[str]:
    """After a server died: its running jobs go back to the queue, in their place. Returns their ids."""
    rows = conn.execute("UPDATE jobs SET status = 'queued', started_at = NULL WHERE status = 'running' "
                        "RETURNING id").fetchall()
    return [row[0] for row in rows]


def get_job(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return _job(row) if row else None


def list_jobs(conn: sqlite3.Connection, *, statuses: tuple[str, ...] = (), limit: int = 100) -> list[Job]:
    """Jobs with one of `statuses` (all if empty): queued ones in the order they will run, then the
    running one, then the rest newest first."""
    where = f"WHERE status IN ({', '.join('?' * len(statuses))})" if statuses else ""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY CASE status WHEN 'queued' THEN 0 WHEN 'running' THEN 1 ELSE 2 END, "
        "CASE WHEN status = 'queued' THEN -priority ELSE 0 END, CASE WHEN status = 'queued' THEN seq ELSE -seq END LIMIT ?",
        (*statuses, limit),
    ).fetchall()
    return [_job(row) for row in rows]


def queue_position(conn: sqlite3.Connection, job: Job) -> int | None:
    """How many queued jobs run before this one (0: next); None if it is not queued."""
    if job.status != "queued":
        return None
    return conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND (priority > ? OR (priority = ? AND seq < ?))",
                        (job.priority, job.priority, job.seq)).fetchone()[0]


def count_jobs(conn: sqlite3.Connection, status: str) -> int:
    return conn.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0]


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _job(row: tuple) -> Job:
    (job_id, kind, api, status, priority, request, options, key, created, started, finished, attempts, run_id, result,
     error, seq) = row
    return Job(job_id, kind, api, status, priority, json.loads(request), json.loads(options), key, created, started,
               finished, attempts, run_id, json.loads(result) if result else None, error, seq)
