"""`Store`: hayai's SQLite file (run history, file hashes, catalog registrations).

One connection per `Store`, shared by threads under a lock, so a server's thread pool can use one
`Store`. WAL mode and a busy timeout let two processes (say the CLI and the server) share the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import threading
import uuid
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import paths
from ..errors import HayaiError, disk_full
from . import catalog_entries as catalog
from . import flop_counts, hashes, history, jobs, speed_measurements, strategy_memory, training
from .catalog_entries import CatalogEntry
from .history import Run
from .jobs import Job
from .migrations import migrate
from .processes import process_token
from .speed_measurements import SpeedMeasurement

__all__ = ["Store", "BUSY_TIMEOUT_S"]

BUSY_TIMEOUT_S = 10.0  # how long a write waits for another process's write to finish


def _now() -> str:
    return history.iso_utc(datetime.now(timezone.utc))


class Store:
    """hayai's database. `Store()` opens `hayai.paths.db_path()`, creating and migrating it."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else paths.db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = _connect(self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- history ---------------------------------------------------------------------------

    def start_run(
        self, kind: str, *, request: dict[str, Any], model: str, model_hash: str | None, device: str
    ) -> int:
        """Log a run as 'running' by this process and return its id; call `finish_run` when it ends."""
        with self._lock:
            return history.insert_run(
                self._conn, kind, request=request, model=model, model_hash=model_hash,
                device=device, now=_now(), process=process_token(),
            )

    def add_output(self, run_id: int, path: str, seed: int) -> None:
        """Record one saved image of running run `run_id` (its outputs and seeds grow as the run goes)."""
        with self._lock:
            history.add_output(self._conn, run_id, path, seed)

    def finish_run(
        self,
        run_id: int,
        *,
        status: str,
        seeds: list[int],
        timings: dict[str, float],
        peak_memory_bytes: int | None,
        outputs: list[str],
        error: str | None = None,
        events: list[dict[str, Any]] | None = None,
    ) -> None:
        """Record how run `run_id` ended: status 'ok', 'error' or 'interrupted'."""
        with self._lock:
            history.finish_run(
                self._conn, run_id, status=status, seeds=seeds, timings=timings,
                peak_memory_bytes=peak_memory_bytes, outputs=outputs, error=error,
                events=events, now=_now(),
            )

    def runs(
        self,
        *,
        limit: int = 50,
        status: str | None = None,
        model: str | None = None,
        search: str | None = None,
        since: datetime | None = None,
        kind: str | None = None,
    ) -> list[Run]:
        """Runs matching every given filter, newest first; `search` is a case-insensitive
        substring of the prompt, `since` an aware datetime (naive ones are local time).
        A run whose process has died is 'interrupted', not 'running'."""
        with self._lock:
            history.end_dead_runs(self._conn, now=_now())
            return history.query_runs(
                self._conn, limit=limit, status=status, model=model, search=search,
                since=since, kind=kind,
            )

    def model_names(self, model_hashes: list[str]) -> dict[str, str]:
        """Model hash -> the name its newest run used, for those of `model_hashes` some run used."""
        with self._lock:
            return history.model_names(self._conn, model_hashes)

    def set_outputs(self, run_id: int, outputs: list[str], event: dict[str, Any]) -> None:
        """A run's files moved (to the trash): its new paths, and an event saying so."""
        with self._lock:
            history.set_outputs(self._conn, run_id, outputs, {**event, "at": _now()})

    def run(self, run_id: int) -> Run:
        """The run with this id; HayaiError if there is none."""
        with self._lock:
            history.end_dead_runs(self._conn, now=_now())
            return history.get_run(self._conn, run_id)

    # -- file hashes -----------------------------------------------------------------------

    def file_sha256(self, path: Path) -> str:
        """SHA-256 of the file, from the cache if size and mtime are unchanged, else computed."""
        key = hashes.file_key(path)
        with self._lock:
            cached = hashes.lookup_sha256(self._conn, key)
        if cached is not None:
            return cached
        sha256 = hashes.compute_sha256(Path(key[0]))  # outside the lock: may take a minute
        with self._lock:
            hashes.save_sha256(self._conn, key, sha256, now=_now())
        return sha256

    def cached_sha256(self, path: Path) -> str | None:
        """The cached SHA-256 if it is fresh for the file as it is now; never reads the file."""
        try:
            key = hashes.file_key(path)
        except FileNotFoundError:
            return None
        with self._lock:
            return hashes.lookup_sha256(self._conn, key)

    # -- catalog registrations -------------------------------------------------------------

    def add_catalog_entry(self, path: Path, kind: str) -> bool:
        """Register a model ('model') or a folder to scan ('folder'); False if already there."""
        with self._lock:
            return catalog.add_entry(self._conn, path, kind, now=_now())

    def remove_catalog_entry(self, path: Path) -> bool:
        """Forget a registration; False if the path was not registered."""
        with self._lock:
            return catalog.remove_entry(self._conn, path)

    def catalog_entries(self) -> list[CatalogEntry]:
        """Every registration, oldest first."""
        with self._lock:
            return catalog.list_entries(self._conn)

    # -- the planner's memory --------------------------------------------------------------------

    def remember_strategy(self, key: tuple[str, str, int, int, int], strategy: dict) -> None:
        """Record the strategy that ran to the end for (model_hash, device_key, width, height, batch)."""
        with self._lock:
            strategy_memory.remember(self._conn, key, strategy, now=_now())

    def recall_strategy(self, key: tuple[str, str, int, int, int]) -> dict | None:
        with self._lock:
            return strategy_memory.recall(self._conn, key)

    def flop_counts(self) -> dict[str, float]:
        """The planner's FLOP counts, by key (`hayai.memory.costs.flop_counts`)."""
        with self._lock:
            return flop_counts.load(self._conn)

    def save_flop_counts(self, counts: Mapping[str, float]) -> None:
        """Keep the counts not kept yet."""
        with self._lock:
            flop_counts.save(self._conn, counts)

    # -- speed levers as measured here ------------------------------------------------------------

    def record_speed(self, measurements: list[SpeedMeasurement]) -> list[SpeedMeasurement]:
        """Keep one bench run's measurements (one per lever) under one timestamp; returns them as stored."""
        with self._lock:
            return speed_measurements.record(self._conn, measurements, now=_now())

    def speed_measurements(self, model_hash: str, device_key: str) -> list[SpeedMeasurement]:
        """Every lever measurement of a model on a device, newest first."""
        with self._lock:
            return speed_measurements.for_model(self._conn, model_hash, device_key)

    # -- LoRA training runs ----------------------------------------------------------------------

    def start_training(self, run_id: int, *, name: str, run_dir: str, dataset: str, family: str, total_steps: int,
                       resumed_from: int | None, config: dict[str, Any]) -> None:
        """Record what a training run (already started with `start_run("train_lora", ...)`) trains."""
        with self._lock:
            training.insert_training_run(self._conn, run_id, name=name, run_dir=run_dir, dataset=dataset,
                                         family=family, total_steps=total_steps, resumed_from=resumed_from, config=config)

    def update_training(self, run_id: int, *, last_step: int, lora_path: str | None = None,
                        metrics: list[tuple[int, str, float]] = ()) -> None:
        """The step reached, the LoRA file once written, and new (step, name, value) metric rows."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                training.update_training_run(self._conn, run_id, last_step=last_step, lora_path=lora_path)
                training.record_metrics(self._conn, run_id, list(metrics))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def training_run(self, run_id: int) -> training.TrainingRun | None:
        with self._lock:
            return training.get_training_run(self._conn, run_id)

    def training_runs(self, name: str | None = None) -> list[training.TrainingRun]:
        """Training runs, newest first (all, or those of one LoRA name)."""
        with self._lock:
            return training.list_training_runs(self._conn, name)

    def training_metrics(self, run_id: int, name: str) -> list[tuple[int, float]]:
        """(step, value) of one metric ('loss', 'val_loss', 'lr') of a training run."""
        with self._lock:
            return training.metrics(self._conn, run_id, name)

    # -- the server's job queue ----------------------------------------------------------------------

    def submit_job(self, *, kind: str, api: str, request: dict[str, Any], options: dict[str, Any], priority: int = 0,
                   idempotency_key: str | None = None, submitted: Any = None) -> tuple[Job, bool]:
        """Queue a job: (the job, True), or (the job this idempotency key already made, False); `submitted` is
        what the client sent (default: `request`), which a retry with the same key must repeat."""
        with self._lock:
            return jobs.insert_job(self._conn, kind=kind, api=api, request=request, options=options, priority=priority,
                                   idempotency_key=idempotency_key, now=_now(),
                                   submitted=request if submitted is None else submitted)

    def claim_job(self) -> Job | None:
        """The next queued job, now marked running; None when the queue is empty."""
        with self._lock:
            return jobs.claim_next(self._conn, now=_now())

    def job_run_id(self, job_id: str, run_id: int) -> None:
        with self._lock:
            jobs.set_run_id(self._conn, job_id, run_id)

    def finish_job(self, job_id: str, *, status: str, result: dict[str, Any] | None = None,
                   error: str | None = None) -> None:
        with self._lock:
            jobs.finish_job(self._conn, job_id, status=status, result=result, error=error, now=_now())

    def cancel_queued_job(self, job_id: str, reason: str = "cancelled") -> bool:
        with self._lock:
            return jobs.cancel_queued(self._conn, job_id, now=_now(), reason=reason)

    def requeue_running_jobs(self) -> list[str]:
        """Jobs a dead server left running go back to the queue (call only while no worker runs)."""
        with self._lock:
            return jobs.requeue_running(self._conn)

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            return jobs.get_job(self._conn, job_id)

    def jobs(self, *, statuses: tuple[str, ...] = (), limit: int = 100) -> list[Job]:
        with self._lock:
            return jobs.list_jobs(self._conn, statuses=statuses, limit=limit)

    def count_jobs(self, status: str) -> int:
        with self._lock:
            return jobs.count_jobs(self._conn, status)

    def queue_position(self, job: Job) -> int | None:
        with self._lock:
            return jobs.queue_position(self._conn, job)


def _connect(path: Path) -> sqlite3.Connection:
    """Open `path` (autocommit, WAL, busy timeout) and bring its schema up to date."""
    if path.is_file() and path.stat().st_size == 0:
        _set_aside(path)
    if not path.exists():
        _create(path)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False, factory=_Connection
    )
    conn.path = path
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.create_function("hayai_fold", 1, history.fold, deterministic=True)
        migrate(conn, where=str(path))
    except sqlite3.DatabaseError as error:
        conn.close()
        raise HayaiError(f"cannot open the hayai store {path}: {error}") from error
    except BaseException:
        conn.close()
        raise
    return conn


def _create(path: Path) -> None:
    """Make a new store whole under a temporary name, then link it into place: hayai never leaves an empty
    `hayai.db`, so an empty one is one whose content was lost (`_set_aside`). A store another process
    linked first wins."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.new")
    try:
        conn = sqlite3.connect(temp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            migrate(conn, where=str(path))
        finally:
            conn.close()
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)


def _set_aside(path: Path) -> None:
    """SQLite would silently start a new history over an empty file: keep it, and its WAL (which may still
    hold the history), as `hayai.db.broken-TIME`, and say so."""
    aside = path.with_name(f"{path.name}.broken-{datetime.now():%Y%m%d-%H%M%S}")
    wal = Path(f"{path}-wal")
    kept = f"{aside} (with {aside}-wal, which may still hold the history)" if wal.is_file() and wal.stat().st_size else str(aside)
    for suffix in ("-wal", "-shm", ""):
        with contextlib.suppress(FileNotFoundError):  # another process set it aside first
            os.rename(f"{path}{suffix}", f"{aside}{suffix}")
    warnings.warn(f"the hayai store {path} was empty (0 bytes): its history is lost; kept the file as {kept} "
                  "and started a new store", RuntimeWarning, stacklevel=4)


def _store_error(path: Path, error: sqlite3.DatabaseError) -> HayaiError | None:
    """The one-line error for a store that is damaged or on a full disk; None for anything else (a bug)."""
    text = str(error)
    full = disk_full(error, path)
    if full is None and "disk I/O error" in text and shutil.disk_usage(path.parent).free < 1 << 20:
        full = disk_full(OSError(errno.ENOSPC, text), path)  # SQLite reports a write into a full WAL as an I/O error
    if full is not None:
        return full
    if "malformed" in text or "not a database" in text:
        return HayaiError(f"the hayai store {path} is damaged ({text}): move it aside (mv {path} {path}.broken) and "
                          f"run again to start a new one; `sqlite3 {path} .recover` may save its history")
    if "disk I/O error" in text:
        return HayaiError(f"disk I/O error on the hayai store {path}: check the disk (dmesg) and run again")
    return None


@contextlib.contextmanager
def _named(path: Path):
    try:
        yield
    except sqlite3.DatabaseError as error:
        named = _store_error(path, error)
        if named is None:
            raise
        raise named from error


class _Cursor(sqlite3.Cursor):
    """A cursor whose damaged-file and full-disk errors are one-line HayaiErrors naming the store."""

    def execute(self, *args):
        with _named(self.connection.path):
            return super().execute(*args)

    def executemany(self, *args):
        with _named(self.connection.path):
            return super().executemany(*args)

    def executescript(self, *args):
        with _named(self.connection.path):
            return super().executescript(*args)

    def fetchone(self):
        with _named(self.connection.path):
            return super().fetchone()

    def fetchmany(self, *args):
        with _named(self.connection.path):
            return super().fetchmany(*args)

    def fetchall(self):
        with _named(self.connection.path):
            return super().fetchall()

    def __next__(self):
        with _named(self.connection.path):
            return super().__next__()


class _Connection(sqlite3.Connection):
    path: Path

    def cursor(self, factory=_Cursor):
        return super().cursor(factory)

    def execute(self, *args):
        return self.cursor().execute(*args)

    def executemany(self, *args):
        return self.cursor().executemany(*args)

    def executescript(self, *args):
        return self.cursor().executescript(*args)
