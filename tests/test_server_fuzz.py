"""Fuzz the server's OpenAPI schema with schemathesis (bounded): no request makes it answer 5xx.

Two runs against one real server process: every operation but the three that queue generation jobs with
valid data (fuzzed, a valid request is a real job: one asking for 3000x3000 would hold the worker for an
hour on a CPU), then those three with data the schema forbids (negative mode). The valid side of those
three is covered by the A1111 and job tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server_process import ServerProcess

GENERATING = ("txt2img_sdapi_v1_txt2img_post", "img2img_sdapi_v1_img2img_post", "create_job_hayai_v1_jobs_post")


def _st() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed (it is in the [test] extra: make setup)")
    return found


@pytest.mark.slow
def test_fuzzing_the_openapi_schema_gives_no_server_error(tmp_path):
    with ServerProcess(tmp_path / "home") as server:
        schema = f"{server.url}/openapi.json"
        common = ["run", schema, "--phases", "fuzzing", "--seed", "1", "--generation-deterministic",
                  "-c", "not_a_server_error", "--request-timeout", "60", "-w", "1"]
        runs = [
            [*common, "-n", "10", *sum((["--exclude-operation-id", op] for op in GENERATING), [])],
            [*common, "-n", "15", "-m", "negative", *sum((["--include-operation-id", op] for op in GENERATING), [])],
        ]
        for args, selected in zip(runs, ("Selected: ", "Selected: 3/")):
            done = subprocess.run([_st(), *args], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                                  env={**os.environ, "NO_COLOR": "1"})  # its .schemathesis cache lands there
            assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
            assert "passed" in done.stdout and selected in done.stdout, done.stdout[-2000:]
        log = server.log.read_text()
    assert "Traceback" not in log, log[-4000:]
