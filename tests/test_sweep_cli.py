"""`hayai sweep` as a user runs it: the issue's example on the default model, killed and resumed."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

from hayai.models.catalog import Catalog
from hayai.store import Store

SWEEP = ["sweep", "--x", "steps=5,10,20", "--y", "cfg=2,7", "--seed", "3"]


def test_sweep_on_the_default_model_survives_a_kill_and_resumes(tmp_path):
    folder = tmp_path / "sweep"
    command = [sys.executable, "-m", "hayai", *SWEEP, "-o", str(folder)]
    state = folder / "cells.jsonl"
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen([*command, "-q"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.monotonic() + 240
        while not (state.is_file() and len(state.read_text().splitlines()) >= 2):
            assert proc.poll() is None, (tmp_path / "log").read_text()
            assert time.monotonic() < deadline, "the sweep did not finish 2 cells in time"
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no handler runs, as when the machine goes down
        proc.wait()
    finished = len(state.read_text().splitlines())
    assert 2 <= finished < 6
    (killed,) = Store().runs(kind="sweep")
    assert killed.status == "interrupted" and "killed or crashed" in killed.error  # not 'running' forever
    images = folder / "images"
    stamps = {p.name: p.stat().st_mtime_ns for p in images.glob("*.png")}
    assert len(stamps) == finished

    done = subprocess.run([*command, "--json"], capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["resumed"], result["ran"], result["cells"]) == (finished, 6 - finished, 6)
    assert len(list(images.glob("*.png"))) == 6
    assert {name: (images / name).stat().st_mtime_ns for name in stamps} == stamps  # finished cells were not redone
    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["steps"]), float(r["cfg_scale"])) for r in rows] == [(s, c) for c in (2, 7) for s in (5, 10, 20)]
    assert all(float(r["denoise_s"]) > 0 and r["text_encode_s"] and r["vae_decode_s"] for r in rows)
    default = Catalog(Store()).default_source().name  # the built-in demo model, or the placeholder before it ships
    assert {r["model_name"] for r in rows} == {default} and {r["seed"] for r in rows} == {"3"}
    assert (folder / "grid.png").is_file() and (folder / "chart.png").is_file() and (folder / "results.json").is_file()

