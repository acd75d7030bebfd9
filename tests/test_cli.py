"""The command line, run as a user runs it: through `hayai`'s entry point, in process (`inprocess.hayai`) where
the process does not matter, in a real process (`process`) for a fresh install and for what is read once
per process (the Hugging Face cache location)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hayai.generation.engine import Engine
from hayai.generation.imagefile import read_image_metadata
from hayai.generation.request import GenerationRequest
from hayai.models.builtin import BUILTIN_MODEL_NAME
from hayai.models.families import Family
from inprocess import hayai

A1111_PAIR = re.compile(r"\s*(\w[\w \-/]+):\s*(\"(?:\\.|[^\\\"])+\"|[^,]*)(?:,|$)")  # modules/infotext_utils.py


def process(*args, env=None, check=True):
    """Run `python -m hayai ARGS` with the test's environment (its $HAYAI_HOME and HF cache)."""
    proc = subprocess.run(
        [sys.executable, "-m", "hayai", *map(str, args)],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"hayai {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _pixels(path_or_image):
    image = Image.open(path_or_image) if not isinstance(path_or_image, Image.Image) else path_or_image
    return np.asarray(image.convert("RGB"))


def test_first_run_makes_a1111_readable_png_and_reproduces_it(tmp_path):
    """A fresh install (nothing installed, nothing downloaded) draws with the built-in demo model."""
    out = tmp_path / "out"
    result = json.loads(process("generate", "a red circle", "--steps", "3", "--seed", "42", "-o", out, "--json").stdout)
    assert (result["model"], result["placeholder"], result["warnings"]) == (BUILTIN_MODEL_NAME, False, [])
    assert Image.open(out / "00000-42.png").size == (64, 64)  # the size it was trained at
    png = out / "00000-42.png"
    assert result["images"][0]["path"] == str(png)
    infotext = Image.open(png).text["parameters"]
    prompt, params_line = infotext.rsplit("\n", 1)
    assert prompt == "a red circle"
    pairs = dict(A1111_PAIR.findall(params_line))
    assert len(pairs) >= 3  # A1111 reads the last line as parameters only from 3 matches on
    assert pairs["Steps"] == "3" and pairs["Seed"] == "42" and pairs["Sampler"] == "DPM++ 2M"
    assert set(result["timings"]) >= {"load", "text_encode", "denoise", "vae_decode", "save"}

    again = json.loads(hayai("generate", "--from", png, "-o", tmp_path / "again", "--json").stdout)
    np.testing.assert_array_equal(_pixels(again["images"][0]["path"]), _pixels(png))
    assert hayai("info", png).stdout.strip() == infotext


def test_api_cli_and_raw_diffusers_give_the_same_pixels(tiny_folders, tmp_path):
    import diffusers

    folder = tiny_folders[Family.SD1]
    api = Engine().generate(GenerationRequest(prompt="a blue square", model=str(folder), steps=4, cfg_scale=6.0,
                                              seed=1000, sampler="DPM++ 2M", schedule_type="Karras",
                                              output_dir=str(tmp_path / "api")))
    cli = json.loads(hayai("generate", "a blue square", "-m", folder, "--steps", "4", "--cfg", "6", "--seed", "1000",
                           "--sampler", "DPM++ 2M Karras", "-o", tmp_path / "cli", "--json").stdout)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    raw = pipe("a blue square", negative_prompt="", num_inference_steps=4, guidance_scale=6.0,
               generator=torch.Generator("cpu").manual_seed(1000)).images[0]
    np.testing.assert_array_equal(_pixels(api.images[0].path), _pixels(raw))
    np.testing.assert_array_equal(_pixels(cli["images"][0]["path"]), _pixels(raw))


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "x", "--steps", "0"], "steps=0 must be between 1 and 1000"),
        (["generate", "x", "--sampler", "Euler b"], "sampler='Euler b' is unknown"),
        (["generate", "x", "--format", "gif"], "image_format='gif' must be one of"),
        (["generate", "x", "-W", "100"], "width=100 must be a multiple of 8"),
        (["generate", "x", "-m", "someone/not-downloaded"], "hf download someone/not-downloaded"),
        (["generate"], "a prompt is required"),
        (["generate", "--from", "missing.png"], "missing.png: file not found"),
        (["generate", "x", "-m", "models/missing.safetensors"], "model='models/missing.safetensors': file not found"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message):
    proc = hayai(*args, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_cut_short_model_says_download_it_again(tmp_path):
    damaged = tmp_path / "model.safetensors"
    damaged.write_bytes((2000).to_bytes(8, "little") + b'{"a": "b')  # a header cut short
    proc = hayai("generate", "x", "-m", damaged, check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {damaged}: this file is incomplete or not a safetensors file; download it again\n"


def test_pickle_checkpoint_refused_with_the_risk_explained(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}}, ckpt)
    proc = hayai("generate", "x", "-m", ckpt, check=False)
    assert proc.returncode == 2 and "pickle" in proc.stderr and "--allow-pickle" in proc.stderr


def test_hub_id_loads_from_the_local_cache(tiny_folders, tmp_path):
    cache = tmp_path / "hub_cache"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--tiny-sd1"
    shutil.copytree(tiny_folders[Family.SD1], repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = json.loads(process("generate", "hub test", "-m", "someone/tiny-sd1", "--steps", "2", "--seed", "1",
                              "-o", tmp_path / "o", "--json", env=env).stdout)
    assert result["model"] == "someone/tiny-sd1" and result["placeholder"] is False
    meta = read_image_metadata(result["images"][0]["path"])
    assert "Model: someone/tiny-sd1" in meta.infotext and meta.hayai["model"]["hub_id"] == "someone/tiny-sd1"


def test_models_catalog_reads_an_a1111_install_in_place(tiny_folders, tmp_path):
    webui = tmp_path / "stable-diffusion-webui"
    shutil.copytree(tiny_folders[Family.SDXL], webui / "models" / "Stable-diffusion" / "my-xl")
    assert "added: folder" in hayai("models", "add", webui).stdout
    listed = json.loads(hayai("models", "list", "--json").stdout)
    assert [(m["name"], m["family"]) for m in listed] == [("my-xl", "sdxl")]
    info = json.loads(hayai("models", "info", "my-xl", "--json").stdout)
    assert info["title"] == f"my-xl [{info['sha256'][:10]}]" and len(info["sha256"]) == 64
    result = json.loads(hayai("generate", "x", "-m", info["title"], "--steps", "1", "--json", "-o", tmp_path / "o").stdout)
    assert result["model"] == "my-xl" and result["model_hash"] == info["model_hash"]
    assert "removed" in hayai("models", "remove", webui).stdout
    assert json.loads(hayai("models", "list", "--json").stdout) == []
    assert (webui / "models" / "Stable-diffusion" / "my-xl" / "model_index.json").is_file()  # files untouched


def test_history_and_prompt_log(tiny_folders, tmp_path):
    folder = tiny_folders[Family.SD3]
    for seed in (1, 2):
        hayai("generate", f"prompt {seed}", "-m", folder, "--steps", "1", "--seed", seed, "-o", tmp_path, "--quiet")
    hayai("generate", "x", "--steps", "0", check=False)  # rejected before a run starts: not logged
    rows = json.loads(hayai("history", "--format", "json").stdout)
    assert [r["request"]["prompt"] for r in rows] == ["prompt 2", "prompt 1"]
    assert all(r["status"] == "ok" and r["model"] == "tiny-sd3" for r in rows)
    tsv = hayai("history", "--format", "tsv").stdout.splitlines()
    assert tsv[0] == "time\toutput\tprompt"
    assert tsv[1].endswith(f"\t{tmp_path / '00001-2.png'}\tprompt 2")
    assert len(json.loads(hayai("history", "--format", "json", "--search", "PROMPT 1").stdout)) == 1


def test_jpeg_and_webp_keep_their_parameters(tiny_folders, tmp_path):
    for fmt in ("jpg", "webp"):
        result = json.loads(hayai("generate", "a square", "-m", tiny_folders[Family.SD1], "--steps", "1", "--seed", "9",
                                  "--format", fmt, "-o", tmp_path, "--json").stdout)
        path = result["images"][0]["path"]
        assert path.endswith("." + fmt)
        assert "Seed: 9" in hayai("info", path).stdout


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_plan_predicts_a_cpu_run_for_the_threads_it_will_use():
    """`hayai generate` runs torch on the free cores (or --threads); the plan's time is for those threads."""
    before = torch.get_num_threads()
    try:
        one, two = (json.loads(hayai("plan", "-m", "arch:sd15", "-W", "256", "-H", "256", "--threads", n, "--json").stdout)
                    for n in ("1", "2"))
    finally:
        torch.set_num_threads(before)
    assert (one["device"]["threads"], two["device"]["threads"]) == (1, 2)
    assert two["device"]["tflops"] == pytest.approx(2 * one["device"]["tflops"])
    chosen = lambda plan: next(c["seconds"] for c in plan["candidates"] if c["strategy"]["name"] == one["chosen"])  # noqa: E731
    assert chosen(one) == pytest.approx(2 * chosen(two), rel=0.01)


def test_plan_and_doctor_speak_json():
    plan = json.loads(hayai("plan", "-m", "arch:sd15", "--device", "RTX 4090 24GB", "-b", "2", "--json").stdout)
    assert plan["chosen"] == "resident" and plan["request"]["width"] == 512 and plan["request"]["batch_size"] == 2
    assert {"strategy", "peak_bytes", "seconds", "fits"} <= set(plan["candidates"][0])
    assert [p["preset"] for p in plan["presets"]] == ["speed", "balanced", "quality"]
    small = json.loads(hayai("plan", "-m", "arch:sd15", "--vram", "2GB", "-W", "1024", "-H", "1024", "--json").stdout)
    assert small["chosen"] != "resident" and small["device"]["total_bytes"] == 2 * 1024**3
    doctor = json.loads(hayai("doctor", "--json").stdout)
    topics = {f["topic"]: f for f in doctor["findings"]}
    assert topics["torch build"]["level"] in ("ok", "problem") and "versions" in topics
    assert doctor["machine"]["devices"][-1]["kind"] == "cpu"
