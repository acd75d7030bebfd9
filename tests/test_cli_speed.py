"""Speed on a busy CPU: torch's thread count comes from the free cores (or --threads) and is recorded; the
commands that only read (--help, info, history, models list, prompt check) never import torch or diffusers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from hayai.errors import RequestError
from hayai.generation.imagefile import read_image_metadata
from hayai.hardware import cpu_threads, free_cores
from inprocess import hayai


@pytest.mark.parametrize(("cpus", "load", "free"), [(2, 1.8, 1), (2, 0.1, 2), (4, 10.0, 1), (16, 3.2, 13), (8, 0.0, 8)])
def test_free_cores_are_the_cpus_the_load_leaves(cpus, load, free):
    assert free_cores(cpus, load) == free


def test_threads_asked_beat_the_environment_which_beats_the_load(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads(2) == (2, "--threads") and cpu_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads()[0] == free_cores()
    with pytest.raises(RequestError, match="threads=0 must be at least 1"):
        cpu_threads(0)


def test_threads_flag_is_used_and_recorded_in_the_image(tmp_path):
    try:
        made = json.loads(hayai("generate", "x", "--steps", "1", "--threads", "2", "-o", tmp_path, "--json").stdout)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest)
    assert read_image_metadata(made["images"][0]["path"]).hayai["threads"] == 2


def test_reading_commands_import_neither_torch_nor_diffusers(tmp_path):
    image = tmp_path / "made.png"
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64")
    Image.new("RGB", (8, 8)).save(image, pnginfo=info)
    code = f"""
import sys
from hayai.cli.main import main
for argv in (["--help"], ["info", {str(image)!r}], ["history"], ["models", "list"], ["prompt", "check", "a [dog:cat:0.5]"]):
    try:
        main(argv)
    except SystemExit as exit:
        assert exit.code in (0, None), (argv, exit.code)
print("HEAVY", sorted(m for m in ("torch", "diffusers") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "HEAVY []"


@pytest.mark.parametrize(("fields", "message"), [
    ({"width": 65}, "width=65 must be a multiple of 8 for sdxl models"),
    ({"sampler": "DDIM", "schedule_type": "Karras"}, "schedule_type='Karras' does not apply to sampler 'DDIM'"),
])
def test_what_the_models_config_decides_is_checked_before_any_load(fields, message):
    """Reported after 250-285 s of loading once; now before the model is touched (an SDXL of random weights here)."""
    from hayai.generation.engine import Engine
    from hayai.generation.request import GenerationRequest

    class NoLoad(Engine):
        def load(self, *args, **kwargs):
            raise AssertionError("the model was loaded before the request was checked")

    with pytest.raises(RequestError, match=message):
        NoLoad(device="cpu").generate(GenerationRequest(prompt="x", model="arch:sdxl", **fields))
