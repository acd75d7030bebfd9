"""The `compile` execution lever: the denoiser's repeated blocks compiled by torch.compile, images within float
rounding of eager's, LoRAs still patched in place, a reload when a compiled pipeline must run plain, and on by
itself only where its measured per-step gain pays back the compilation still owed.

Every test compiles with dynamo's "eager" backend ($HAYAI_COMPILE_BACKEND, for tests only): dynamo traces the
blocks as it does for inductor, without building C++ kernels, which takes a minute per model on a CPU."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from hayai.errors import RequestError
from hayai.models.families import Family
from hayai.speed import regional_compile
from hayai.store import SpeedMeasurement
from inprocess import hayai


@pytest.fixture(autouse=True)
def eager_backend(monkeypatch):
    monkeypatch.setenv(regional_compile.BACKEND_VARIABLE, "eager")


def _measured(lever, *, model_hash="h", ratio=1.0, seconds=0.4, psnr=None, one_off=None, device_key="cpu|x|1"):
    return SpeedMeasurement(
        model="m", model_hash=model_hash, family="sd1", width=64, height=64, steps=4, device_key=device_key,
        threads=1, lever=lever, request={}, repeats=1, denoise_ratio=ratio, end_to_end_ratio=ratio,
        denoise_seconds=seconds, end_to_end_seconds=seconds, adherence_points=None, psnr_db=psnr, ssim=None,
        hayai_version="0", torch_version="0", one_off_seconds=one_off, measured_at="2026-01-01T00:00:00+00:00", id=1)


def _decide(measured, **changes):
    kwargs = dict(denoiser_class="UNet2DConditionModel", width=64, height=64, steps=20, images=1, compiled=False)
    return regional_compile.decide(measured, **{**kwargs, **changes})


def _run(engine, request, execution):
    return engine.generate(request, engine.run_options(save=False, execution=execution))


def _pixels(result):
    return np.asarray(result.images[0].image, dtype=np.int16)


def _request(tiny_folders, **changes):
    from hayai.generation.request import GenerationRequest

    return GenerationRequest(**{"prompt": "a red circle", "model": str(tiny_folders[Family.SD1]), "steps": 2,
                                "seed": 1, "sampler": "Euler", **changes})


# -- the choice, on given numbers ---------------------------------------------------------------------------------


def test_compile_is_on_only_where_the_time_it_saves_exceeds_the_compilation_owed():
    exact = _measured("exact", seconds=0.4)  # 0.1 s per step at 64 px
    faster = _measured("compile", ratio=0.5, psnr=90.0, one_off=30.0)
    # 20 steps x 0.1 s x 0.5 = 1 s saved an image: 30 s of compilation pays from 31 images
    assert _decide([exact, faster], images=30) == (
        False, "0.50x per step saves 30.0 s on 20 steps x 30 image(s), compilation 30.0 s (it pays from 31 images)")
    assert _decide([exact, faster], images=31)[0]
    assert _decide([exact, faster], compiled=True) == (  # compiled already: nothing owed, one image pays
        True, "0.50x per step saves 1.0 s on 20 steps x 1 image(s), already compiled")
    # what every execution lever needs: a measurement here that pays end to end and keeps the pixels
    assert "`hayai bench speed --levers compile` measures it" in _decide([exact])[1]
    assert _decide([exact, _measured("compile", ratio=0.97, psnr=90.0, one_off=1.0)], compiled=True) == (
        False, "0.97x end to end (it pays below 0.95x)")
    assert "its images differ" in _decide([exact, _measured("compile", ratio=0.5, psnr=30.0, one_off=1.0)])[1]
    assert "never timed here" in _decide([exact, dataclasses.replace(faster, one_off_seconds=None)])[1]
    assert _decide([exact, faster], denoiser_class="SD3Transformer2DModel") == (
        False, "SD3Transformer2DModel names no repeated blocks to compile")


def test_choose_takes_the_verdict_and_openvino_leaves_nothing_to_compile():
    from hayai.speed.execution import choose

    levers, why = choose([], compile=(True, "it pays"))
    assert levers == {"compile"} and why[-1] == "compile: on, it pays"
    levers, why = choose([], compile=(True, "it pays"), openvino=(True, "it pays too"))
    assert levers == {"openvino"} and "compile: off, openvino runs the UNet instead" in why


# -- compiling and running ----------------------------------------------------------------------------------------


def test_a_compiled_run_draws_what_eager_draws_and_running_plain_again_reloads(tiny_folders):
    from hayai.generation.engine import Engine

    engine = Engine(device="cpu")
    request = _request(tiny_folders)
    plain = _run(engine, request, frozenset())
    compiled = _run(engine, request, frozenset({"compile"}))
    loaded = engine.load(request.model)
    assert loaded.compiled and [e for e in compiled.events if e.get("event") == "compile"] == [
        {"event": "compile", "backend": "eager", "blocks": ["BasicTransformerBlock"]}]
    assert np.abs(_pixels(compiled) - _pixels(plain)).max() <= 1
    pipe = loaded.pipe
    assert _run(engine, request, frozenset({"compile"})).events == []  # compiled already: nothing to do
    back = _run(engine, request, frozenset())  # torch cannot undo a compile: a fresh pipeline
    assert engine.load(request.model).pipe is not pipe and not engine.load(request.model).compiled
    assert np.array_equal(_pixels(back), _pixels(plain))


def test_a_lora_applied_after_compiling_changes_the_image_as_without_compile(tiny_folders):
    from hayai.generation.engine import Engine
    from hayai.lora.catalog import loras_dir
    from hayai.lora.synthetic import random_kohya_lora, save_lora
    from hayai.models.loading import load_pipeline, source_from_path

    pipe = load_pipeline(source_from_path(tiny_folders[Family.SD1]))
    save_lora(random_kohya_lora(pipe, Family.SD1, seed=3, strength=2.0), loras_dir() / "style.safetensors",
              metadata={"ss_network_dim": "4"})
    engine = Engine(device="cpu")
    base, styled = _request(tiny_folders), _request(tiny_folders, loras=("style:1.0",))
    plain_base, plain_styled = _run(engine, base, frozenset()), _run(engine, styled, frozenset())
    assert not np.array_equal(_pixels(plain_base), _pixels(plain_styled))
    _run(engine, base, frozenset({"compile"}))  # compiled (and run) first, without the LoRA
    pipe = engine.load(base.model).pipe
    compiled_styled = _run(engine, styled, frozenset({"compile"}))  # then patched into the compiled blocks
    assert engine.load(base.model).pipe is pipe  # in place, not reloaded
    assert np.abs(_pixels(compiled_styled) - _pixels(plain_styled)).max() <= 1
    unstyled = _run(engine, base, frozenset({"compile"}))  # and taken out again
    assert np.abs(_pixels(unstyled) - _pixels(plain_base)).max() <= 1


def test_compile_refuses_a_denoiser_without_repeated_blocks(tiny_folders):
    from hayai.generation.engine import Engine
    from hayai.generation.request import GenerationRequest

    engine = Engine(device="cpu")
    request = GenerationRequest("a red circle", model=str(tiny_folders[Family.SD3]), steps=2, seed=1)
    with pytest.raises(RequestError, match=r"'compile' compiles a denoiser's repeated blocks, and "
                                           r"SD3Transformer2DModel names none"):
        _run(engine, request, frozenset({"compile"}))


def test_the_bench_compiles_untimed_and_keeps_the_compile_time(tiny_folders):
    model = str(tiny_folders[Family.SD1])
    bench = json.loads(hayai("bench", "speed", "-m", model, "--steps", "2", "--repeats", "2",
                             "--levers", "compile", "--json").stdout)
    exact, lever = bench["levers"]
    assert lever["lever"] == "compile" and lever["request"]["execution"] == ["compile"]
    assert exact["one_off_seconds"] is None and lever["one_off_seconds"] >= 0
    assert lever["identical"] or lever["psnr_db"] > 40
    assert len(bench["details"]["compile"]["time"]["rounds"]) == 2
    assert "compile: " in hayai("plan", "-m", model, "--steps", "2").stdout


def test_the_engine_compiles_only_where_a_request_pays_the_compilation_back(tiny_folders):
    from hayai.generation.engine import Engine

    engine = Engine(device="cpu")
    request = _request(tiny_folders, steps=4, width=64, height=64)
    first = _run(engine, request, frozenset())
    loaded = engine.load(request.model)
    key = engine.device_spec.key
    engine.store.record_speed([_measured("exact", model_hash=first.model_hash, device_key=key),
                               _measured("compile", model_hash=first.model_hash, device_key=key, ratio=0.5, psnr=90.0,
                                         one_off=30.0)])
    levers, why = engine.execution_for(loaded, request)  # 4 steps x 0.1 s x 0.5 = 0.2 s saved, 30 s owed
    assert levers == frozenset() and "compile: off, 0.50x per step saves 0.2 s" in " ".join(why)
    many = dataclasses.replace(request, batch_count=200)  # 40 s saved
    assert engine.execution_for(loaded, many)[0] == {"compile"}
    _run(engine, request, frozenset({"compile"}))  # compiled now: nothing owed, one image pays
    pipe = loaded.pipe
    levers, why = engine.execution_for(loaded, request)
    assert levers == {"compile"} and "compile: on, 0.50x per step saves 0.2 s on 4 steps x 1 image(s), already " \
                                     "compiled" in why
    engine.generate(request, engine.run_options(save=False))  # the engine's own choice keeps the compiled pipeline
    assert loaded.pipe is pipe and loaded.compiled and loaded.execution == {"compile"}
