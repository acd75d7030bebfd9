"""`hayai ARGS` run inside the test process: the same entry point (`hayai.cli.main.main`, with its one-line
errors and exit codes) without the seconds of imports a new process pays, which under load hit timeouts.
Use a real process only where the process itself matters (signals, locks, stdout of a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from hayai.cli.main import main


def hayai(*args, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `hayai ARGS` in process; the result reads like `subprocess.run`'s (returncode, stdout, stderr)."""
    argv = [str(arg) for arg in args]
    with CliRunner().isolation(env=env) as (stdout, stderr, _):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = stdout.getvalue().decode(), stderr.getvalue().decode()
    if check and code != 0:
        raise AssertionError(f"hayai {argv} exited {code}:\n{out}\n{err}")
    return subprocess.CompletedProcess(["hayai", *argv], code, out, err)
