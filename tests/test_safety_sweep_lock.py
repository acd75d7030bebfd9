"""One sweep per folder: a live second sweep is refused before it touches anything; a dead one's lock is taken over."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from hayai.errors import RequestError
from hayai.generation.engine import Engine
from hayai.generation.request import GenerationRequest
from hayai.models.families import Family
from hayai.store.processes import process_token
from hayai.sweep import make_plan, parse_axis, run_sweep
from hayai.sweep.lock import LOCK_FILE, sweep_lock


def _plan(tiny_folders):
    base = GenerationRequest("a red circle", model=str(tiny_folders[Family.SD1]), width=64, height=64, seed=42)
    return make_plan(base, parse_axis("steps=1,2"))


def test_a_second_sweep_in_a_running_sweeps_folder_is_refused(tiny_folders, tmp_path):
    folder = tmp_path / "sweep"
    run_sweep(Engine(), _plan(tiny_folders), folder)
    before = {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")}
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the running sweep
    try:
        (folder / LOCK_FILE).write_text(process_token(holder.pid))
        with pytest.raises(RequestError, match=rf"in use by another sweep \(pid {holder.pid} on "):
            run_sweep(Engine(), _plan(tiny_folders), folder, restart=True)  # --restart would delete its cells
    finally:
        holder.kill()
        holder.wait()
    after = {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != LOCK_FILE}
    assert after == before  # nothing deleted, nothing rewritten
    assert [run.status for run in Engine().store.runs(kind="sweep")] == ["ok"]  # the refused one never started


def test_a_dead_sweeps_lock_is_taken_over_and_released(tiny_folders, tmp_path):
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / LOCK_FILE).write_text(f"{socket.gethostname()}:{2**22 + 1}:")  # above Linux's largest pid: no such process
    result = run_sweep(Engine(), _plan(tiny_folders), folder)
    assert result.ran == 2
    assert not (folder / LOCK_FILE).exists()


def test_the_lock_is_exclusive_and_released_on_error(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with sweep_lock(tmp_path):
            assert (tmp_path / LOCK_FILE).read_text() == process_token()
            with pytest.raises(RequestError, match="in use by another sweep"):  # a second sweep in this process too
                with sweep_lock(tmp_path):
                    pass
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
