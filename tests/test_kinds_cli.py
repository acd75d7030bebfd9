"""`hayai img2img`, `hayai inpaint`, `hayai generate --hires`, the new sweep axes and the model card, as a user
runs them on the built-in model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hayai.cli.main import app
from hayai.demo.shapes import Scene, render
from hayai.generation.engine import Engine
from hayai.generation.fields import FIELDS
from hayai.generation.request import GenerationRequest
from hayai.sweep.axes import find_axis


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


@pytest.fixture
def shapes_image(tmp_path):
    path = tmp_path / "in.png"
    render(Scene("circle", "red", "large", "center", "white")).save(path)
    return path


def test_img2img_and_inpaint_commands_write_reproducible_images(shapes_image, tmp_path):
    made = _invoke("img2img", shapes_image, "a large blue circle in the center on a white background", "--strength", "0.5",
                   "--seed", "4", "-o", tmp_path / "out", "--json")
    assert made["request"]["init_image"].startswith(str(tmp_path / "hayai_home" / "inputs"))
    assert made["request"]["denoising_strength"] == 0.5
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 0).save(mask)
    Image.new("L", (32, 32), 255).save(tmp_path / "white.png")
    m = Image.open(mask)
    m.paste(Image.open(tmp_path / "white.png"), (0, 0))
    m.save(mask)
    painted = _invoke("inpaint", shapes_image, "a small green square at the top left on a white background", "--mask", mask,
                      "--strength", "1", "--seed", "1", "--masked-content", "fill", "-o", tmp_path / "out", "--json")
    again = _invoke("generate", "--from", painted["images"][0]["path"], "-o", tmp_path / "again", "--json")
    first = np.asarray(Image.open(painted["images"][0]["path"]))
    np.testing.assert_array_equal(np.asarray(Image.open(again["images"][0]["path"])), first)
    info = CliRunner().invoke(app, ["info", painted["images"][0]["path"]]).stdout
    assert "Denoising strength: 1" in info and "Masked content: fill" in info and "Mask blur: 4" in info


def test_generate_with_hires_fix_on_the_demo_model(tmp_path):
    made = _invoke("generate", "a small red circle at the top left on a white background", "--hires", "2",
                   "--hires-steps", "5", "--hires-denoise", "0.4", "--upscaler", "Lanczos", "--seed", "42",
                   "-o", tmp_path, "--json")
    image = Image.open(made["images"][0]["path"])
    assert image.size == (128, 128)
    assert made["timings"]["upscale"] >= 0 and made["request"]["hr_scale"] == 2.0


def test_sweep_over_denoising_strength_writes_its_columns(shapes_image, tmp_path):
    result = _invoke("sweep", "a large red circle in the center on a white background", "--image", shapes_image,
                     "--x", "denoising=0.2,0.6", "--steps", "4", "--seed", "1", "-o", tmp_path / "sweep", "--json")
    assert result["cells"] == 2
    with open(tmp_path / "sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["denoising_strength"]) for r in rows] == [0.2, 0.6]
    assert "resize_mode" in rows[0] and "hr_scale" not in rows[0]  # img2img's columns, not the hires ones


def test_every_a1111_label_of_the_table_is_a_sweep_axis():
    for spec in FIELDS:
        if spec.label:
            assert find_axis(spec.label).key == spec.name
    assert find_axis("Hires upscaler").key == "hr_upscaler" and find_axis("denoise").key == "denoising_strength"


def test_the_model_card_fills_what_the_request_leaves_unset(tmp_path):
    engine = Engine(device="cpu")
    card = engine.generate(GenerationRequest("a red circle", steps=2, seed=1), save=False).request
    assert (card.cfg_scale, card.sampler, card.schedule_type) == (2.0, "DPM++ 2M", "Karras")
    mine = engine.generate(GenerationRequest("a red circle", steps=2, seed=1, cfg_scale=7.0, sampler="Euler"),
                           save=False).request
    assert (mine.cfg_scale, mine.sampler, mine.schedule_type) == (7.0, "Euler", "Uniform")  # Euler's own, not the card's Karras


def test_bad_image_input_exits_2_with_one_line(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    Image.new("L", (32, 32)).save(tmp_path / "small.png")
    proc = subprocess.run([sys.executable, "-m", "hayai", "inpaint", str(tmp_path / "in.png"), "x", "--mask",
                           str(tmp_path / "small.png")], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: mask is 32x32 but init_image is 64x64; give a mask of the image's size"]


def test_kill_9_mid_run_leaves_every_saved_image_in_the_history(tmp_path):
    """A real SIGKILL between images: each image saved before it is in the run's history row (issue 14)."""
    import os
    import signal
    import time

    from hayai.store import Store

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "hayai", "generate", "a small red circle at the top left on a white "
                             "background", "--steps", "4", "--seed", "1", "-c", "20", "-o", str(out), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 240
    try:
        while len(list(out.glob("*.png"))) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no two images in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = sorted(str(p) for p in out.glob("*.png"))
    (run,) = Store().runs(kind="generate")
    assert run.status == "interrupted" and 2 <= len(saved) < 20
    # every image whose save finished is in the history; the kill may land between an image's file appearing
    # and its row being updated, so at most the last file on disk can be missing from it
    assert set(run.outputs) <= set(saved) and len(saved) - len(run.outputs) <= 1 and len(run.outputs) >= 1
