"""The store and the disk: a damaged or emptied hayai.db and a full disk are one-line errors or a warning, never a silent loss."""

from __future__ import annotations

import errno
import os

import pytest
from typer.testing import CliRunner

from hayai.cli.main import app
from hayai.errors import DiskFullError, HayaiError, disk_full
from hayai.generation.imagefile import save_image
from hayai.paths import db_path
from hayai.store import Store


def _store_with_runs(count: int) -> Store:
    store = Store()
    for _ in range(count):
        run = store.start_run("generate", request={"prompt": "a red circle " * 20}, model="m", model_hash=None, device="cpu")
        store.finish_run(run, status="ok", seeds=[1], timings={}, peak_memory_bytes=None, outputs=[])
    return store


def test_a_damaged_store_is_a_one_line_error_naming_the_file_and_the_fix():
    store = _store_with_runs(300)
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    store.close()
    data = bytearray(db_path().read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\xff" * 4096  # one page of garbage, as a bad sector leaves
    db_path().write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["history", "--limit", "500"])
    assert isinstance(result.exception, HayaiError), result.exception
    message = str(result.exception)
    assert f"the hayai store {db_path()} is damaged (database disk image is malformed)" in message
    assert f"mv {db_path()} {db_path()}.broken" in message


def test_a_full_disk_under_the_store_says_disk_full_at_its_path():
    store = _store_with_runs(1)
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite's own "database or disk is full"
    with pytest.raises(DiskFullError, match=f"disk full at {db_path()}"):
        for _ in range(1000):
            store.start_run(
                "generate", request={"prompt": "x" * 4000}, model="m", model_hash=None, device="cpu")


def test_an_empty_store_is_kept_aside_with_a_warning_not_silently_replaced():
    db_path().parent.mkdir(parents=True)
    db_path().write_bytes(b"")
    wal = db_path().with_name("hayai.db-wal")
    wal.write_bytes(b"what may be left of the history")
    with pytest.warns(RuntimeWarning, match=r"hayai\.db was empty \(0 bytes\): its history is lost; kept the file as .*broken-"):
        store = Store()
    assert store.runs() == [] and db_path().stat().st_size > 0
    (aside,) = db_path().parent.glob("hayai.db.broken-*[0-9]")
    assert aside.stat().st_size == 0
    assert aside.with_name(aside.name + "-wal").read_bytes() == b"what may be left of the history"


def test_a_new_store_is_never_an_empty_file():
    Store().close()
    assert db_path().stat().st_size > 0
    assert sorted(p.name for p in db_path().parent.iterdir() if p.name.startswith(".")) == []  # no temporary left


class _DiskFills:
    def save(self, file, **options):
        file.write(b"\x89PNG the start of an image")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_saving_an_image_says_disk_full_at_the_folder(tmp_path):
    with pytest.raises(DiskFullError, match=f"disk full at {tmp_path}: free some space"):
        save_image(_DiskFills(), tmp_path / "00000-1.png", infotext="x", hayai_meta={})
    assert os.listdir(tmp_path) == []


def test_full_disk_errors_are_recognised_wherever_they_come_from():
    from safetensors import SafetensorError

    lora = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    assert str(disk_full(lora, "/runs/x/lora.safetensors")).startswith("disk full at /runs/x/lora.safetensors:")
    assert "disk full at /data/ckpt" in str(disk_full(OSError(errno.ENOSPC, "No space left on device", "/data/ckpt")))
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full(ValueError("something else")) is None
