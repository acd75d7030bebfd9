"""Which process runs a run: a token written when the run starts, and whether that process still lives.

A run whose process was killed (SIGKILL, a crash, the machine's power) never records how it ended; the
history tells such a run from one still going by asking whether its process exists. The token is
`HOST:PID:START`: START is the process's start time (Linux: clock ticks after boot, with the boot id),
so a pid the system has since given to another process does not pass for the run's.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

__all__ = ["process_token", "process_alive"]


def process_token(pid: int | None = None) -> str:
    """The token of process `pid` (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_stat(pid)[1]}"


def process_alive(token: str) -> bool | None:
    """True while the process named by `token` runs, False once it has ended, None where this process
    cannot tell (another machine, or a system without signal 0)."""
    host, pid_text, start = token.rsplit(":", 2)
    if host != socket.gethostname() or sys.platform == "win32":  # on Windows os.kill(pid, 0) sends CTRL_C
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process has that pid
        pass
    state, started = _stat(pid)
    if state in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    return not start or not started or started == start


def _stat(pid: int) -> tuple[str, str]:
    """(state, `BOOT_ID-TICKS` when it started) of process `pid` where /proc tells (Linux); ("", "") elsewhere."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", ""
    fields = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    return fields[0], f"{boot}-{fields[19]}"  # fields 3 and 22 of stat, counted after pid and name
