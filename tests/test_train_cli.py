"""`hayai dataset` and `hayai train lora` as a user runs them: in process, and a real process for a real Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from hayai.demo.shapes import samples
from hayai.models.families import Family
from inprocess import hayai as _hayai


def _pictures(folder, count=6):
    folder.mkdir()
    for i, (_, caption, image) in enumerate(samples(9, count)):
        image.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption)
    return folder


def test_dataset_check_json_and_bad_training_options(tmp_path):
    report = json.loads(_hayai("dataset", "check", _pictures(tmp_path / "pics"), "--resolution", "64", "--json").stdout)
    assert report["usable"] == 6 and {f["code"] for f in report["findings"]} >= {"few_images"}
    bad = _hayai("train", "lora", "--dataset", tmp_path / "pics", "--rank", "0", check=False)
    assert bad.returncode == 2 and "error: rank=0 must be at least 1" in bad.stderr


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tiny_folders, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"dataset: {_pictures(tmp_path / 'pics')}\nmodel: {tiny_folders[Family.SD1]}\noutput_name: cli\nsteps: 400\n"
        "batch_size: 2\nrank: 4\nvalidation_every: 1000\ncheckpoint_every: 5\nsample_every: 0\nlearning_rate: 1.0e-3\n"
    )
    run_dir = tmp_path / "hayai_home" / "training" / "cli"
    proc = subprocess.Popen([sys.executable, "-m", "hayai", "train", "lora", str(config), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    deadline = time.monotonic() + 180
    while not (run_dir / "checkpoints" / "step-000005").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # the first checkpoint is written
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped_at = max(int(c.name.split("-")[1]) for c in (run_dir / "checkpoints").iterdir())
    assert 5 <= stopped_at < 400  # a checkpoint where Ctrl-C stopped it

    from typer.testing import CliRunner

    from hayai.cli.main import app

    resumed = CliRunner().invoke(app, ["train", "lora", str(config), "--resume", "--steps", str(stopped_at + 3), "--json"])
    assert resumed.exit_code == 0, resumed.output
    result = json.loads(resumed.stdout)
    assert result["status"] == "ok" and result["step"] == result["total_steps"] > stopped_at
    assert result["losses"][stopped_at - 1][0] == stopped_at  # the history before the stop is kept
    listed = CliRunner().invoke(app, ["lora", "list", "--json"]).stdout
    assert [entry["name"] for entry in json.loads(listed)] == ["cli"]
