"""Reading this process's memory from /proc (Linux), for the benchmark scripts beside this file."""

from __future__ import annotations

from pathlib import Path


def status_kib(key: str) -> int:
    """A `/proc/self/status` figure in KiB: VmRSS (resident now), VmHWM (peak resident since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")
