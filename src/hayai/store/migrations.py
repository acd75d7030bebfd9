"""The store's schema, as append-only numbered migrations tracked with `PRAGMA user_version`.

`MIGRATIONS[i]` takes the database from version `i` to `i + 1`. Released migrations are never
edited, reordered or removed, only appended: a user's database may be at any earlier version, and
the only way forward is to run every later script in order. JSON values are stored as TEXT.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..errors import HayaiError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "schema_version"]

# Released migrations are never edited, only appended.
MIGRATIONS: list[str] = [
    # 1: run history, the file-hash cache, the user's model catalog registrations.
    """
    CREATE TABLE runs (
        id                INTEGER PRIMARY KEY,
        kind              TEXT NOT NULL,              -- 'generate', 'sweep', 'train_lora'
        status            TEXT NOT NULL,              -- 'running', 'ok', 'error', 'interrupted'
        created_at        TEXT NOT NULL,              -- UTC ISO 8601, microseconds
        finished_at       TEXT,
        model             TEXT NOT NULL,
        model_hash        TEXT,
        device            TEXT NOT NULL,
        request           TEXT NOT NULL,              -- JSON object
        seeds             TEXT NOT NULL DEFAULT '[]', -- JSON list of int
        timings           TEXT NOT NULL DEFAULT '{}', -- JSON object: step name -> seconds
        peak_memory_bytes INTEGER,
        outputs           TEXT NOT NULL DEFAULT '[]', -- JSON list of file paths
        error             TEXT,
        events            TEXT NOT NULL DEFAULT '[]'  -- JSON list of objects
    );
    CREATE INDEX runs_created_at ON runs (created_at);
    CREATE TABLE file_hashes (
        path      TEXT PRIMARY KEY,                   -- resolved absolute path
        size      INTEGER NOT NULL,
        mtime_ns  INTEGER NOT NULL,
        sha256    TEXT NOT NULL,                      -- 64 lowercase hex digits
        hashed_at TEXT NOT NULL
    );
    CREATE TABLE catalog_entries (
        path     TEXT PRIMARY KEY,                    -- resolved absolute path
        kind     TEXT NOT NULL,                       -- 'model' or 'folder'
        added_at TEXT NOT NULL
    );
    """,
    # 2: what ran for (model, device, size, batch): the planner's memory, so the next run starts there.
    """
    CREATE TABLE strategy_memory (
        model_hash  TEXT NOT NULL,
        device_key  TEXT NOT NULL,                    -- kind, name and memory size of the device
        width       INTEGER NOT NULL,
        height      INTEGER NOT NULL,
        batch_size  INTEGER NOT NULL,
        strategy    TEXT NOT NULL,                    -- JSON object (hayai.memory.strategies.Strategy)
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (model_hash, device_key, width, height, batch_size)
    );
    """,
    # 3: LoRA training runs (their `runs` row has kind 'train_lora') and their losses by step.
    """
    CREATE TABLE training_runs (
        run_id        INTEGER PRIMARY KEY,            -- runs.id
        name          TEXT NOT NULL,                  -- the LoRA's output name
        run_dir       TEXT NOT NULL,                  -- checkpoints, samples, charts
        dataset       TEXT NOT NULL,                  -- the source folder
        family        TEXT NOT NULL,                  -- 'sd1', 'sdxl', 'sd3', ...
        total_steps   INTEGER NOT NULL,
        resumed_from  INTEGER,                        -- the step a resumed run started at (NULL: from 0)
        last_step     INTEGER NOT NULL DEFAULT 0,     -- the last completed step
        lora_path     TEXT,                           -- the kohya file in the LoRA catalog, once written
        config        TEXT NOT NULL                   -- JSON object: the resolved TrainConfig
    );
    CREATE INDEX training_runs_name ON training_runs (name);
    CREATE TABLE training_metrics (
        run_id  INTEGER NOT NULL,
        step    INTEGER NOT NULL,
        name    TEXT NOT NULL,                        -- 'loss', 'val_loss', 'lr'
        value   REAL NOT NULL,
        PRIMARY KEY (run_id, step, name)
    );
    """,
    # 4: the process that runs each run, so a run whose process was killed is not 'running' forever:
    # 'HOST:PID:START' (hayai.store.processes), NULL for runs logged before. (No SQL comment here: SQLite
    # splices an added column's text into the table's CREATE statement, where a '--' would swallow the ')'.)
    """
    ALTER TABLE runs ADD COLUMN process TEXT;
    """,
    # 5: the planner's FLOP counts (hayai.memory.costs), a second or more each, so each is made once.
    """
    CREATE TABLE flop_counts (
        key    TEXT PRIMARY KEY,                      -- sha256 of what was counted (config, size, versions)
        flops  REAL NOT NULL                          -- at batch 1
    );
    """,
    # 6: the server's job queue (hayai.store.jobs): jobs outlive the server process, so a restart loses none.
    """
    CREATE TABLE jobs (
        seq             INTEGER PRIMARY KEY,          -- submission order (FIFO within a priority)
        id              TEXT NOT NULL UNIQUE,         -- the job id clients see (32 hex digits)
        kind            TEXT NOT NULL,                -- 'generate', 'sweep', 'explore' or 'train'
        api             TEXT NOT NULL,                -- 'hayai', 'ui' (asynchronous) or 'a1111' (a client waits)
        status          TEXT NOT NULL,                -- 'queued', 'running', 'done', 'error', 'interrupted', 'cancelled'
        priority        INTEGER NOT NULL DEFAULT 0,   -- higher runs first
        request         TEXT NOT NULL,                -- JSON: what to run (a GenerationRequest, a sweep, a TrainConfig)
        options         TEXT NOT NULL,                -- JSON: how to run it and what to send back
        idempotency_key TEXT UNIQUE,                  -- a client's retry with the same key finds this job
        submitted_hash  TEXT NOT NULL,                -- sha256 of what the client sent (a retry must send the same)
        created_at      TEXT NOT NULL,
        started_at      TEXT,
        finished_at     TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,   -- times a server started it (a restart runs it again)
        run_id          INTEGER,                      -- runs.id of its last attempt
        result          TEXT,                         -- JSON: images, timings, plan (hayai.generation.results)
        error           TEXT
    );
    CREATE INDEX jobs_queue ON jobs (status, priority, seq);
    """,
    # 7: speed levers as measured here (`hayai bench speed`, hayai.store.speed_measurements): one row per lever
    # of a bench run, its time as ratios to the exact run of the same rounds, and its distance to that run.
    """
    CREATE TABLE speed_measurements (
        id                 INTEGER PRIMARY KEY,
        measured_at        TEXT NOT NULL,             -- UTC ISO 8601; the same for every lever of one bench run
        model              TEXT NOT NULL,             -- the name it was measured as
        model_hash         TEXT NOT NULL,             -- hayai.models.catalog.source_hash (arch:*: of its name)
        family             TEXT NOT NULL,             -- 'sd1', 'sdxl', 'sd3', ...
        width              INTEGER NOT NULL,
        height             INTEGER NOT NULL,
        steps              INTEGER NOT NULL,          -- the exact run's
        device_key         TEXT NOT NULL,             -- kind, name and memory size of the device (DeviceSpec.key)
        threads            INTEGER NOT NULL,          -- torch CPU threads
        lever              TEXT NOT NULL,             -- 'exact' or 'FIELD=VALUE+FIELD=VALUE'
        request            TEXT NOT NULL,             -- JSON object: the knobs it ran with
        repeats            INTEGER NOT NULL,          -- timed rounds
        denoise_ratio      REAL NOT NULL,             -- median per-round ratio to the exact run (< 1: faster)
        end_to_end_ratio   REAL NOT NULL,
        denoise_seconds    REAL NOT NULL,             -- medians
        end_to_end_seconds REAL NOT NULL,
        adherence_points   REAL,                      -- mean adherence in percent (the demo model only)
        psnr_db            REAL,                      -- mean distance to the exact run's images (Inf: identical)
        ssim               REAL,
        hayai_version      TEXT NOT NULL,
        torch_version      TEXT NOT NULL
    );
    CREATE INDEX speed_measurements_model ON speed_measurements (model_hash, device_key, measured_at);
    """,
    # 8: a lever's one-off cost, paid before its timed rounds (`compile`: the compilation at its first call),
    # which the engine weighs against the time the lever saves on a request (NULL: none, or not measured).
    """
    ALTER TABLE speed_measurements ADD COLUMN one_off_seconds REAL;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The database's `PRAGMA user_version`: how many migrations it has had."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(
    conn: sqlite3.Connection, *, where: str, migrations: Sequence[str] = MIGRATIONS
) -> int:
    """Apply the pending `migrations` in one transaction and return the new version.

    `conn` must be in autocommit mode (`isolation_level=None`). The version is read again under
    `BEGIN IMMEDIATE`, so two processes opening a new file at once migrate it only once.
    `where` names the database in errors.
    """
    latest = len(migrations)
    if _checked_version(conn, latest, where) == latest:
        return latest
    conn.execute("BEGIN IMMEDIATE")
    try:
        for number in range(_checked_version(conn, latest, where) + 1, latest + 1):
            for statement in _statements(migrations[number - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return latest


def _checked_version(conn: sqlite3.Connection, latest: int, where: str) -> int:
    version = schema_version(conn)
    if version > latest:
        raise HayaiError(
            f"{where} was created by a newer hayai (schema version {version}, this hayai knows "
            f"up to {latest}); upgrade hayai"
        )
    return version


def _statements(script: str) -> list[str]:
    """Split a script into single statements (`execute` takes one; `executescript` would commit)."""
    *pieces, rest = script.split(";")
    statements, pending = [], ""
    for piece in pieces:
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if (pending + rest).strip():
        raise ValueError(f"migration script ends without ';': {(pending + rest).strip()!r}")
    return statements
