"""The SQLite store: migrations, run history, the hash cache, catalog registrations."""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hayai.errors import HayaiError
from hayai.store import SCHEMA_VERSION, CatalogEntry, Run, Store, history_tsv
from hayai.store.migrations import MIGRATIONS, migrate
from hayai.store.processes import process_alive, process_token


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store" / "hayai.db"


@pytest.fixture
def store(db: Path):
    with Store(db) as opened:
        yield opened


def _raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


def _start(store: Store, prompt: str = "a cat", **overrides) -> int:
    fields = dict(request={"prompt": prompt}, model="sd15", model_hash=None, device="cpu")
    fields.update(overrides)
    return store.start_run(fields.pop("kind", "generate"), **fields)


def _finish(store: Store, run_id: int, status: str = "ok") -> None:
    store.finish_run(
        run_id, status=status, seeds=[1], timings={}, peak_memory_bytes=None, outputs=[]
    )


# -- migrations ------------------------------------------------------------------------------


def test_new_database_gets_schema_version_and_wal(store: Store, db: Path) -> None:
    conn = _raw(db)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "file_hashes", "catalog_entries"} <= tables
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_path_is_under_hayai_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAYAI_HOME", str(tmp_path / "home"))
    with Store() as store:
        assert store.path == tmp_path / "home" / "hayai.db"
    assert (tmp_path / "home" / "hayai.db").is_file()


def test_reopening_keeps_rows_and_runs_no_migration_twice(db: Path) -> None:
    with Store(db) as store:
        run_id = _start(store, "kept")
    with Store(db) as store:  # re-running migration 1 would fail: its tables exist
        assert store.run(run_id).prompt == "kept"

    marker = "CREATE TABLE IF NOT EXISTS marker (n INTEGER); INSERT INTO marker VALUES (1);"
    conn = _raw(db)
    for _ in range(2):
        assert migrate(conn, where="test", migrations=[*MIGRATIONS, marker]) == SCHEMA_VERSION + 1
    assert conn.execute("SELECT count(*) FROM marker").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_failed_migration_rolls_back(db: Path) -> None:
    Store(db).close()
    conn = _raw(db)
    broken = "CREATE TABLE half (n INTEGER); INSERT INTO no_such_table VALUES (1);"
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        migrate(conn, where="test", migrations=[*MIGRATIONS, broken])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0


def test_newer_database_is_refused(db: Path) -> None:
    Store(db).close()
    _raw(db).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(HayaiError, match="created by a newer hayai.*upgrade"):
        Store(db)


def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "hayai.db"
    bogus.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(HayaiError, match="hayai.db"):
        Store(bogus)


# -- history ---------------------------------------------------------------------------------


def test_run_round_trip_keeps_every_field(store: Store) -> None:
    request = {"prompt": "a fox, 8k", "steps": 20, "size": [512, 768], "lora": {"x": 0.5}}
    run_id = store.start_run(
        "generate", request=request, model="sdxl-base", model_hash="31e35c80fc", device="cuda:0"
    )
    running = store.run(run_id)
    assert running.status == "running"
    assert (running.finished_at, running.seeds, running.outputs) == (None, [], [])
    created = datetime.fromisoformat(running.created_at)
    assert created.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 60

    events = [{"t": 0.1, "event": "plan", "offload": "none"}]
    store.finish_run(
        run_id, status="error", seeds=[7, 8], timings={"load": 1.5, "denoise": 3.25},
        peak_memory_bytes=123_456_789, outputs=["/o/1.png", "/o/2.png"], error="boom",
        events=events,
    )
    assert store.run(run_id) == Run(
        id=run_id, kind="generate", status="error", created_at=running.created_at,
        finished_at=store.run(run_id).finished_at, model="sdxl-base", model_hash="31e35c80fc",
        device="cuda:0", request=request, seeds=[7, 8], timings={"load": 1.5, "denoise": 3.25},
        peak_memory_bytes=123_456_789, outputs=["/o/1.png", "/o/2.png"], error="boom",
        events=events,
    )
    finished = store.run(run_id)
    assert finished.finished_at >= finished.created_at
    assert finished.prompt == "a fox, 8k"
    assert store.runs() == [finished]


def test_finish_defaults_and_prompt_fallback(store: Store) -> None:
    run_id = store.start_run(
        "sweep", request={"steps": [10, 20]}, model="m", model_hash=None, device="cpu"
    )
    store.finish_run(
        run_id, status="interrupted", seeds=[], timings={}, peak_memory_bytes=None, outputs=[]
    )
    run = store.run(run_id)
    assert (run.error, run.events, run.prompt, run.status) == (None, [], "", "interrupted")


def test_history_errors_name_the_value(store: Store) -> None:
    with pytest.raises(HayaiError, match="no run with id 999"):
        store.run(999)
    with pytest.raises(HayaiError, match="no run with id 999"):
        _finish(store, 999)
    run_id = _start(store)
    with pytest.raises(ValueError, match="'done'"):
        _finish(store, run_id, status="done")
    with pytest.raises(ValueError, match="'running'"):
        _finish(store, run_id, status="running")
    _finish(store, run_id)
    with pytest.raises(HayaiError, match=f"run {run_id} is already finished"):
        _finish(store, run_id, status="error")
    with pytest.raises(ValueError, match="'paint'"):
        _start(store, kind="paint")
    with pytest.raises(ValueError, match="'paint'"):
        store.runs(kind="paint")
    with pytest.raises(ValueError, match="'weird'"):
        store.runs(status="weird")
    with pytest.raises(ValueError, match="limit.*0"):
        store.runs(limit=0)


def test_filters_each_narrow_the_result(store: Store, db: Path) -> None:
    a = _start(store, "A Red FOX in snow", model="sd15")
    b = _start(store, "blue sky", model="sdxl")
    c = _start(store, "ÉCLAIR au café, STRASSE", model="sdxl", kind="sweep")
    d = _start(store, "100% red", model="sd15", kind="train_lora")
    _finish(store, a)
    _finish(store, b, status="error")
    _finish(store, c)
    ages = {a: "2020-01-01", b: "2021-01-01", c: "2022-01-01", d: "2023-01-01"}
    conn = _raw(db)
    for run_id, day in ages.items():
        stamp = f"{day}T00:00:00.000000+00:00"
        conn.execute("UPDATE runs SET created_at = ? WHERE id = ?", (stamp, run_id))

    def ids(**filters) -> list[int]:
        return [run.id for run in store.runs(**filters)]

    assert ids() == [d, c, b, a]  # newest first
    assert ids(limit=2) == [d, c]
    assert ids(status="ok") == [c, a]
    assert ids(status="running") == [d]
    assert ids(model="sd15") == [d, a]
    assert ids(kind="sweep") == [c]
    assert ids(search="red") == [d, a]
    assert ids(search="fox") == [a]
    assert ids(search="éclair") == [c]  # beyond ASCII
    assert ids(search="straße") == [c]  # casefold: ß ~ SS
    assert ids(search="%") == [d]  # literal, not a LIKE wildcard
    assert ids(search="nothing like it") == []
    assert ids(since=datetime(2021, 6, 1, tzinfo=timezone.utc)) == [d, c]
    old = datetime(2019, 1, 1, tzinfo=timezone.utc)
    assert ids(model="sd15", status="ok", search="fox", since=old) == [a]


def test_history_tsv_exact() -> None:
    def run(run_id: int, prompt: str, outputs: list[str]) -> Run:
        return Run(
            id=run_id, kind="generate", status="ok",
            created_at=f"2024-05-0{run_id}T10:00:00.000000+00:00",
            finished_at=None, model="m", model_hash=None, device="cpu", request={"prompt": prompt},
            outputs=outputs,
        )

    runs = [run(2, "two\tcats\non a\r\nmat", ["/o/a.png", "/o/b.png"]), run(1, "failed", [])]
    assert history_tsv(runs) == (
        "time\toutput\tprompt\n"
        "2024-05-02T10:00:00.000000+00:00\t/o/a.png\ttwo cats on a mat\n"
        "2024-05-02T10:00:00.000000+00:00\t/o/b.png\ttwo cats on a mat\n"
        "2024-05-01T10:00:00.000000+00:00\t\tfailed\n"
    )
    assert history_tsv([]) == "time\toutput\tprompt\n"


# -- file hashes -----------------------------------------------------------------------------


def test_hash_cache(store: Store, tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    content = bytes(range(256)) * (10 * 1024) + b"tail"  # 2.5 MiB: several 1 MiB chunks
    model.write_bytes(content)
    assert store.cached_sha256(model) is None

    true_hash = hashlib.sha256(content).hexdigest()
    assert store.file_sha256(model) == true_hash
    assert store.cached_sha256(model) == true_hash

    # Same size, same mtime, different bytes: the cache answers without reading the file.
    stat = model.stat()
    model.write_bytes(b"X" * len(content))
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert store.file_sha256(model) == true_hash
    assert store.cached_sha256(model) == true_hash

    # A new mtime makes the entry stale.
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert store.cached_sha256(model) is None
    assert store.file_sha256(model) == hashlib.sha256(b"X" * len(content)).hexdigest()

    # So does a new size, even with the mtime put back.
    model.write_bytes(b"short")
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert store.cached_sha256(model) is None
    assert store.file_sha256(model) == hashlib.sha256(b"short").hexdigest()


def test_hash_cache_is_keyed_by_resolved_path_and_shared(
    store: Store, db: Path, tmp_path: Path
) -> None:
    model = tmp_path / "lora.safetensors"
    model.write_bytes(b"weights")
    link = tmp_path / "link.safetensors"
    link.symlink_to(model)
    expected = hashlib.sha256(b"weights").hexdigest()
    assert store.file_sha256(link) == expected
    assert store.cached_sha256(model) == expected
    with Store(db) as other:
        assert other.cached_sha256(model) == expected
    assert store.cached_sha256(tmp_path / "missing.safetensors") is None
    with pytest.raises(FileNotFoundError):
        store.file_sha256(tmp_path / "missing.safetensors")


# -- catalog registrations -------------------------------------------------------------------


def test_catalog_add_remove_list(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path / "models")
    assert store.add_catalog_entry(Path("one.safetensors"), "model") is True
    same_file = tmp_path / "models" / ".." / "models" / "one.safetensors"
    assert store.add_catalog_entry(same_file, "model") is False
    assert store.add_catalog_entry(tmp_path / "models", "folder") is True
    entries = store.catalog_entries()
    assert [(e.path, e.kind) for e in entries] == [
        (tmp_path.resolve() / "models" / "one.safetensors", "model"),
        (tmp_path.resolve() / "models", "folder"),
    ]
    assert all(isinstance(e, CatalogEntry) and e.path.is_absolute() for e in entries)
    assert datetime.fromisoformat(entries[0].added_at).utcoffset().total_seconds() == 0

    assert store.remove_catalog_entry(Path("one.safetensors")) is True
    assert store.remove_catalog_entry(Path("one.safetensors")) is False
    assert [e.kind for e in store.catalog_entries()] == ["folder"]
    with pytest.raises(ValueError, match="'lora'"):
        store.add_catalog_entry(tmp_path, "lora")


# -- sharing ---------------------------------------------------------------------------------


def test_two_stores_on_one_file_see_each_others_writes(db: Path, tmp_path: Path) -> None:
    with Store(db) as first, Store(db) as second:
        one = _start(first, "from first")
        two = _start(second, "from second")
        _finish(first, two)
        _finish(second, one, status="interrupted")
        three = _start(first, "third")
        assert first.add_catalog_entry(tmp_path, "folder")
        for store in (first, second):
            assert [r.id for r in store.runs()] == [three, two, one]
            assert [r.status for r in store.runs()] == ["running", "ok", "interrupted"]
            assert [e.path for e in store.catalog_entries()] == [tmp_path.resolve()]
        assert second.add_catalog_entry(tmp_path, "folder") is False


def test_one_store_is_safe_across_threads(store: Store) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(20):
                run_id = _start(store, f"w{worker} #{i}")
                _finish(store, run_id)
                store.runs(limit=5)
        except BaseException as error:  # collected and re-raised by the test thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    runs = store.runs(limit=1000)
    assert len(runs) == 80 and {r.status for r in runs} == {"ok"}


# -- runs whose process died ------------------------------------------------------------------


def _killed_run(db: Path, prompt: str) -> int:
    """Start a run in a child process, then SIGKILL the child before it can finish the run."""
    code = (
        "import sys, time; from hayai.store import Store; "
        f"s = Store({str(db)!r}); "
        f"print(s.start_run('generate', request={{'prompt': {prompt!r}}}, model='m', model_hash=None, device='cpu'), flush=True); "
        "time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    run_id = int(child.stdout.readline())
    child.kill()
    child.wait()
    return run_id


def test_a_run_whose_process_was_killed_is_interrupted_not_running(store: Store, db: Path) -> None:
    killed = _killed_run(db, "killed")
    alive = _start(store, "still going")  # this test's own process: alive
    runs = {run.id: run for run in store.runs()}
    assert runs[alive].status == "running" and runs[alive].error is None
    assert runs[killed].status == "interrupted"
    assert runs[killed].finished_at is not None
    assert "ended before the run did: killed or crashed" in runs[killed].error
    assert store.run(killed).status == "interrupted"
    assert [r.id for r in store.runs(status="running")] == [alive]
    _finish(store, alive)  # the live run still finishes normally
    assert store.run(alive).status == "ok"


def test_a_dead_process_is_noticed_by_run_too(store: Store, db: Path) -> None:
    killed = _killed_run(db, "killed")
    assert store.run(killed).status == "interrupted"


def test_runs_logged_before_processes_were_recorded_stay_as_they_were(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = _raw(db)
    migrate(conn, where="test", migrations=MIGRATIONS[:3])
    conn.execute(
        "INSERT INTO runs (kind, status, created_at, model, device, request) "
        "VALUES ('generate', 'running', '2026-01-01T00:00:00.000000+00:00', 'm', 'cpu', '{}')"
    )
    conn.close()
    with Store(db) as store:
        (run,) = store.runs()
    assert run.status == "running"  # unknown process: nothing to tell it by


def test_process_tokens_tell_live_dead_reused_and_foreign_processes() -> None:
    me = process_token()
    host, pid, start = me.rsplit(":", 2)
    assert (host, int(pid)) == (socket.gethostname(), os.getpid())
    assert process_alive(me) is True
    if start:  # Linux: the start time tells a reused pid from the run's own process
        assert process_alive(f"{host}:{pid}:{start}0") is False
    assert process_alive(f"not-{host}:{pid}:{start}") is None  # another machine's run: cannot tell
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    token = process_token(child.pid)
    assert process_alive(token) is True
    child.kill()
    deadline = time.monotonic() + 10
    while process_alive(token) and time.monotonic() < deadline:  # a zombie until reaped: already dead
        time.sleep(0.01)
    assert process_alive(token) is False
    child.wait()
    assert process_alive(token) is False
