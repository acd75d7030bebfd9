"""The OpenVINO CPU lever: the UNet converted once per model and size into the cache, images within float
rounding of PyTorch's through the normal request path, and on by itself only where its measured per-step
gain pays back the conversion still owed. Tests that convert need the `[openvino]` extra and skip without it;
the decision is plain arithmetic and runs everywhere."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hayai.errors import RequestError
from hayai.models.families import Family
from hayai.speed import openvino
from hayai.speed.execution import pays_back
from hayai.store import SpeedMeasurement
from inprocess import hayai


def _measured(lever, *, model_hash="h", width=64, steps=4, ratio=1.0, seconds=0.4, psnr=None, device_key="cpu|x|1"):
    return SpeedMeasurement(
        model="m", model_hash=model_hash, family="sd1", width=width, height=width, steps=steps, device_key=device_key,
        threads=1, lever=lever, request={}, repeats=1, denoise_ratio=ratio, end_to_end_ratio=ratio,
        denoise_seconds=seconds, end_to_end_seconds=seconds, adherence_points=None, psnr_db=psnr, ssim=None,
        hayai_version="0", torch_version="0", measured_at="2026-01-01T00:00:00+00:00", id=1)


_CONVERSION = {"cost": "conversion", "paid": "already converted"}


def _decide(measured, **changes):
    kwargs = dict(model_hash="h", family=Family.SD1, width=64, height=64, steps=20, images=1, on_cpu=True,
                  installed=True, min_psnr_db=40.0)
    return openvino.decide(measured, **{**kwargs, **changes})


def _converted(model_hash="h", width=64, height=64, seconds=30.0):
    """A conversion record as `convert` leaves one (without converting)."""
    folder = openvino.cache_folder(model_hash, width, height)
    folder.mkdir(parents=True)
    (folder / "unet.xml").write_text("<net/>")
    (folder / "conversion.json").write_text(json.dumps({"seconds": seconds, "converted_at": "2026-01-01T00:00:00Z"}))


# -- the pay-back, on given numbers ---------------------------------------------------------------------------------


def test_openvino_pays_only_when_the_time_it_saves_exceeds_the_conversion_owed():
    # 20 steps x 1 image x 2 s x (1 - 0.8) = 8 s saved against 30 s of conversion: not yet
    assert pays_back(steps=20, images=1, step_seconds=2.0, ratio=0.8, owed_seconds=30.0, **_CONVERSION) == (
        False, "0.80x per step saves 8.0 s on 20 steps x 1 image(s), conversion 30.0 s (it pays from 4 images)")
    assert pays_back(steps=20, images=4, step_seconds=2.0, ratio=0.8, owed_seconds=30.0, **_CONVERSION)[0]
    assert pays_back(steps=20, images=1, step_seconds=2.0, ratio=0.8, owed_seconds=0.0, **_CONVERSION) == (
        True, "0.80x per step saves 8.0 s on 20 steps x 1 image(s), already converted")
    slower = pays_back(steps=20, images=1000, step_seconds=2.0, ratio=1.1, owed_seconds=0.0, **_CONVERSION)
    assert slower[0] is False and slower[1].endswith("(it pays from no number of images)")


def test_the_decision_needs_the_extra_the_cpu_a_measurement_and_a_pay_back():
    exact = _measured("exact", seconds=0.4)  # 0.1 s per step at 64 px
    faster = _measured("openvino", ratio=0.5, psnr=80.0)
    assert _decide([exact, faster], installed=False) == (
        False, "the [openvino] extra is not installed (pip install 'hayai[openvino]')")
    assert "has an accelerator" in _decide([exact, faster], on_cpu=False)[1]
    assert "not sd3" in _decide([exact, faster], family=Family.SD3)[1]
    assert _decide([exact, faster], blockers=("LoRAs", "step_cache"))[1] == (
        "the converted UNet would leave out this request's LoRAs and step_cache")
    assert "`hayai bench speed --levers openvino`" in _decide([exact])[1]
    assert "pixels were not compared or differ" in _decide([exact, _measured("openvino", ratio=0.5, psnr=30.0)])[1]
    assert "never timed here" in _decide([exact, faster])[1]  # no cache, no record of a conversion
    _converted(width=128, height=128, seconds=30.0)  # converted at another size: 30 s still owed at 64 px
    # 20 steps x 0.1 s x 0.5 = 1 s an image: 30 images to pay back 30 s
    assert _decide([exact, faster], images=30) == (False, "0.50x per step saves 30.0 s on 20 steps x 30 image(s), "
                                                          "conversion 30.0 s (it pays from 31 images)")
    assert _decide([exact, faster], images=31)[0]
    # the per-step time scales with the pixels from the measured size: at 128 px a step is 4x longer
    assert _decide([exact, faster], width=128, height=128, images=1) == (
        True, "0.50x per step saves 4.0 s on 20 steps x 1 image(s), already converted")
    # and with the thread count, from the one it was measured on (1): on 2 threads a step takes half as long
    assert _decide([exact, faster], width=128, height=128, images=1, threads=2)[1] == (
        "0.50x per step saves 2.0 s on 20 steps x 1 image(s), already converted")
    # the host memory the plain run leaves must hold what OpenVINO adds (2.1x the converted UNet's float32 bytes)
    from types import SimpleNamespace

    gib, sd15_unet = 2**30, 860_000_000
    tight = SimpleNamespace(candidates=(), chosen=SimpleNamespace(peak_bytes=5 * gib), budget_bytes=8 * gib)
    assert _decide([exact, faster], width=128, height=128, plan=tight, unet_params=sd15_unet) == (
        False, "it would hold about 6.7 GiB of host memory beyond the plain run's (2.1x the UNet's float32 weights), "
               "and 3.0 GiB is left beside it")
    roomy = SimpleNamespace(candidates=(), chosen=SimpleNamespace(peak_bytes=5 * gib), budget_bytes=12 * gib)
    assert _decide([exact, faster], width=128, height=128, plan=roomy, unet_params=sd15_unet)[0]


def test_the_lever_without_the_extra_names_the_install_command(monkeypatch):
    from hayai.speed.execution import check

    monkeypatch.setattr(openvino, "available", lambda: False)
    with pytest.raises(RequestError, match=r"needs the \[openvino\] extra: pip install 'hayai\[openvino\]'"):
        check(["openvino"])


# -- converting and running (the [openvino] extra) -------------------------------------------------------------------


def _run(engine, request, execution):
    return engine.generate(request, engine.run_options(save=False, execution=execution))


def test_an_openvino_run_converts_once_and_draws_what_pytorch_draws(tiny_folders):
    pytest.importorskip("openvino")
    import numpy as np

    from hayai.generation.engine import Engine
    from hayai.generation.request import GenerationRequest
    from hayai.speed.quality import psnr

    model = str(tiny_folders[Family.SD1])
    # A1111 weighting, a negative prompt, a multistep sampler, CFG and a batch of 2: the normal request path
    request = GenerationRequest("a (red:1.3) circle", negative_prompt="blurry", model=model, steps=4, seed=1,
                                sampler="DPM++ 2M", schedule_type="Karras", batch_size=2)
    engine = Engine(device="cpu")
    plain = _run(engine, request, frozenset())
    first = _run(engine, request, frozenset({"openvino"}))
    state = engine.load(model).pipe.unet._hayai_openvino
    assert state.calls == {"openvino": 4, "torch": 0}  # every UNet call went through OpenVINO
    converted = [e for e in first.events if e.get("event") == "openvino"]
    assert len(converted) == 1 and converted[0]["converted_seconds"] > 0 and converted[0]["size"] == "64x64"
    folder = openvino.cache_folder(first.model_hash, 64, 64)
    record = json.loads((folder / "conversion.json").read_text())
    assert record["seconds"] == converted[0]["converted_seconds"] and record["family"] == "sd1"
    for a, b in zip(plain.images, first.images):
        assert psnr(a.image, b.image) >= 60  # 8-bit images: identical or off by one in a few pixels
        assert np.abs(np.asarray(a.image, dtype=int) - np.asarray(b.image, dtype=int)).max() <= 1
    assert psnr(plain.images[0].image, plain.images[1].image) < 30  # (the two seeds do draw different images)

    again = _run(engine, request, frozenset({"openvino"}))  # attached already: nothing converted or compiled
    assert not [e for e in again.events if e.get("event") == "openvino"]
    other = Engine(device="cpu")  # a fresh engine (a new process): the cache is read, not converted again
    reused = [e for e in _run(other, request, frozenset({"openvino"})).events if e.get("event") == "openvino"]
    assert reused[0]["converted_seconds"] is None and reused[0]["cache"] == str(folder)
    reread = json.loads((folder / "conversion.json").read_text())
    assert reread.pop("last_used") >= record.pop("last_used") and reread == record  # only its use is recorded

    back = _run(engine, request, frozenset())  # off again: the UNet's own forward
    assert not hasattr(engine.load(model).pipe.unet, "_hayai_openvino")
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(plain.images, back.images))


def test_the_engine_goes_through_openvino_only_where_it_pays(tiny_folders, tmp_path):
    pytest.importorskip("openvino")
    from hayai.generation.engine import Engine
    from hayai.generation.imagefile import read_image_metadata
    from hayai.generation.request import GenerationRequest

    model = str(tiny_folders[Family.SD1])
    engine = Engine(device="cpu")
    request = GenerationRequest("a red circle", model=model, steps=4, seed=1, width=64, height=64, output_dir=str(tmp_path))
    plain = engine.generate(request)
    assert read_image_metadata(plain.images[0].path).hayai.get("execution") is None  # nothing measured: plain
    key = engine.device_spec.key
    engine.store.record_speed([_measured("exact", model_hash=plain.model_hash, device_key=key),
                               _measured("openvino", model_hash=plain.model_hash, device_key=key, ratio=0.5, psnr=90.0)])
    _converted(plain.model_hash, 128, 128, seconds=30.0)  # a conversion timed at another size
    assert engine.execution_for(engine.load(model), request)[0] == frozenset()  # 0.2 s saved, 30 s owed
    many = dataclasses.replace(request, batch_count=200)  # 40 s saved
    levers, why = engine.execution_for(engine.load(model), many)
    assert levers == {"openvino"} and "openvino: on, 0.50x per step saves 40.0 s" in why[-1]

    cached = engine.generate(request, engine.run_options(execution=frozenset({"openvino"})))  # pays the conversion
    chosen = engine.generate(request)  # now nothing is owed: one image pays
    assert read_image_metadata(chosen.images[0].path).hayai["execution"] == ["openvino"]
    assert cached.images[0].image.tobytes() == chosen.images[0].image.tobytes()
    with_lever = engine.execution_for(engine.load(model), dataclasses.replace(request, step_cache=2))
    assert with_lever == (frozenset(), [
        "channels_last: off, not measured here at this size (`hayai bench speed --levers channels_last` measures it)",
        "compile: off, not measured here at this size (`hayai bench speed --levers compile` measures it)",
        "openvino: off, the converted UNet would leave out this request's step_cache"])
    with pytest.raises(RequestError, match="would leave out this request's LoRAs; run without it"):
        engine.execution_for(engine.load(model), dataclasses.replace(request, prompt="x <lora:a:1>"),
                             engine.run_options(execution=frozenset({"openvino"})))
    plan = json.loads(hayai("plan", "-m", model, "-W", "64", "-H", "64", "--steps", "4", "--json").stdout)
    assert plan["execution"]["levers"] == ["openvino"] and "already converted" in plan["execution"]["reasons"][-1]


def test_openvino_converts_unet_families_only(tiny_folders):
    pytest.importorskip("openvino")
    from hayai.generation.engine import Engine
    from hayai.generation.request import GenerationRequest

    engine = Engine(device="cpu")
    request = GenerationRequest("a red circle", model=str(tiny_folders[Family.SD3]), steps=2, seed=1)
    with pytest.raises(RequestError, match=r"openvino converts UNet models \(sd1, sd2, sdxl\), not sd3 models"):
        _run(engine, request, frozenset({"openvino"}))


def test_an_sdxl_unet_converts_with_its_added_conditions(tiny_folders):
    pytest.importorskip("openvino")
    import numpy as np

    from hayai.generation.engine import Engine
    from hayai.generation.request import GenerationRequest

    model = str(tiny_folders[Family.SDXL])
    engine = Engine(device="cpu")
    request = GenerationRequest("a red circle", model=model, steps=2, seed=1)
    plain = _run(engine, request, frozenset())
    fast = _run(engine, request, frozenset({"openvino"}))
    assert engine.load(model).pipe.unet._hayai_openvino.calls == {"openvino": 2, "torch": 0}
    assert np.abs(np.asarray(plain.images[0].image, dtype=int) - np.asarray(fast.images[0].image, dtype=int)).max() <= 1
