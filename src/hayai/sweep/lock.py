"""One sweep per folder at a time: a lock file naming the process that runs it.

Two sweeps in one folder would delete each other's cells and run every cell twice. The lock file
`sweep.lock` holds the holder's `HOST:PID:START` token (see `hayai.store.processes`): a second sweep
is refused while that process lives, and takes the lock over once it has died (killed, crashed).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from hayai.errors import RequestError
from hayai.store.processes import process_alive, process_token

__all__ = ["LOCK_FILE", "sweep_lock"]

LOCK_FILE = "sweep.lock"


@contextlib.contextmanager
def sweep_lock(folder: Path) -> Iterator[None]:
    """Hold the lock on sweep folder `folder` (created if needed) while the block runs."""
    folder.mkdir(parents=True, exist_ok=True)
    lock, token = folder / LOCK_FILE, process_token()
    while not _create(lock, token):
        holder = _read(lock)
        if holder is None:  # the holder ended between our attempt and our look
            continue
        if _alive(holder) is not False:  # alive, or on another machine: never take a lock that may be live
            host, pid, _ = holder.rsplit(":", 2)
            raise RequestError(
                f"{folder} is in use by another sweep (pid {pid} on {host}); wait for it to end or give this one "
                f"its own --output folder (if that process is gone, delete {lock})"
            )
        _take_over(lock, holder)
    try:
        yield
    finally:
        if _read(lock) == token:
            lock.unlink(missing_ok=True)


def _create(lock: Path, token: str) -> bool:
    """Write the lock whole under a temporary name, then link it into place: a lock is never half-written."""
    temp = lock.with_name(f".{lock.name}.{uuid.uuid4().hex[:8]}")
    temp.write_text(token, encoding="utf-8")
    try:
        os.link(temp, lock)
        return True
    except FileExistsError:
        return False
    finally:
        temp.unlink()


def _read(lock: Path) -> str | None:
    try:
        return lock.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def _alive(holder: str) -> bool | None:
    """`process_alive` for the token in a lock; a lock without a token names no process, so no live one."""
    try:
        return process_alive(holder)
    except ValueError:
        return False


def _take_over(lock: Path, dead: str) -> None:
    """Remove the lock of the dead holder `dead`; a lock another new sweep wrote meanwhile is put back."""
    aside = lock.with_name(f"{lock.name}.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:  # another sweep took it over first
        return
    try:
        if _read(aside) != dead:
            with contextlib.suppress(FileExistsError):
                os.link(aside, lock)
    finally:
        aside.unlink()
