"""`hayai bench speed`: levers typed by the field table, measurements kept in the store, and `hayai plan` showing
the latest of each lever at the nearest size, with the numbers the bench measured."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest

from hayai.errors import RequestError
from hayai.models.families import Family
from hayai.speed.bench import bench_speed, lever_list, parse_lever
from hayai.store import SpeedMeasurement, Store
from hayai.store.speed_measurements import nearest
from inprocess import hayai


def test_a_lever_is_any_request_field_typed_by_the_field_table():
    assert parse_lever("exact") == {}
    assert parse_lever("step_cache=3+token_merging=0.5") == {"step_cache": 3, "token_merging": 0.5}
    assert parse_lever("speed=balanced+steps=4+sampler=Euler a") == {"speed": "balanced", "steps": 4, "sampler": "Euler a"}
    assert parse_lever("lora_partial=true") == {"lora_partial": True}
    with pytest.raises(RequestError, match="'warp=9' is not FIELD=VALUE of a request field"):
        parse_lever("warp=9")
    with pytest.raises(RequestError, match="step_cache='three' is not an integer"):
        parse_lever("step_cache=three")
    assert lever_list("step_cache=2, exact,step_cache=2,speed=balanced") == ["exact", "step_cache=2", "speed=balanced"]


def test_a_few_step_preset_keeps_the_steps_its_lora_sets():
    from hayai.speed.bench import lever_fields

    assert lever_fields("speed=fast") == {"speed": "fast", "steps": None}  # over the benchmark's 20: the LoRA's 4
    assert lever_fields("speed=fast+steps=6") == {"speed": "fast", "steps": 6}
    assert lever_fields("speed=balanced") == {"speed": "balanced"}


def _measurement(lever="exact", *, width=512, steps=20, at="2025-01-01T00:00:00+00:00", ratio=1.0, id=1):
    return SpeedMeasurement(
        model="m", model_hash="h", family="sd1", width=width, height=width, steps=steps, device_key="cpu|x|1",
        threads=1, lever=lever, request={}, repeats=1, denoise_ratio=ratio, end_to_end_ratio=ratio,
        denoise_seconds=1.0, end_to_end_seconds=1.0, adherence_points=None, psnr_db=None, ssim=None,
        hayai_version="0", torch_version="0", measured_at=at, id=id)


def test_nearest_takes_the_latest_of_each_lever_at_the_nearest_size_then_steps():
    old, new = "2025-01-01T00:00:00+00:00", "2025-02-01T00:00:00+00:00"
    rows = [
        _measurement("exact", width=256, at=old, id=1), _measurement("step_cache=3", width=256, at=old, ratio=0.5, id=2),
        _measurement("exact", width=256, at=new, id=3), _measurement("step_cache=3", width=256, at=new, ratio=0.4, id=4),
        _measurement("token_merging=0.5", width=256, steps=30, at=new, id=5),
        _measurement("exact", width=1024, at=new, id=6), _measurement("step_cache=2", width=1024, at=new, id=7),
    ]
    chosen = nearest(rows, 384, 384, 20)  # 256 is nearer than 1024 by pixel count
    assert [(m.lever, m.denoise_ratio, m.measured_at) for m in chosen] == [
        ("exact", 1.0, new), ("step_cache=3", 0.4, new)]
    assert [m.lever for m in nearest(rows, 384, 384, 30)] == ["token_merging=0.5"]
    assert [m.lever for m in nearest(rows, 900, 900, 20)] == ["exact", "step_cache=2"]
    assert nearest([], 512, 512, 20) == []


def test_measurements_are_kept_under_one_timestamp_and_identical_images_survive(tmp_path):
    rows = [_measurement("exact"), _measurement("step_cache=3", ratio=0.4)]
    rows[1] = SpeedMeasurement(**{**rows[1].__dict__, "psnr_db": math.inf, "ssim": 1.0, "request": {"step_cache": 3}})
    with Store(tmp_path / "hayai.db") as store:
        stored = store.record_speed(rows)
        again = store.speed_measurements("h", "cpu|x|1")
        assert store.speed_measurements("h", "cuda|x|1") == []
    assert len({m.measured_at for m in stored}) == 1 and stored[0].measured_at != rows[0].measured_at
    assert [(m.lever, m.denoise_ratio, m.psnr_db, m.request) for m in again] == [
        ("exact", 1.0, None, {}), ("step_cache=3", 0.4, math.inf, {"step_cache": 3})]
    assert again[1].to_dict()["psnr_db"] is None and again[1].to_dict()["identical"] is True
    json.dumps([m.to_dict() for m in again], allow_nan=False)  # strict JSON
    conn = sqlite3.connect(tmp_path / "hayai.db")
    assert conn.execute("SELECT count(*) FROM speed_measurements").fetchone()[0] == 2


def test_bench_speed_keeps_what_plan_shows(tiny_folders):
    model = str(tiny_folders[Family.SD1])
    assert "hayai bench speed -m" in hayai("plan", "-m", model, "--steps", "2").stdout  # nothing measured yet
    assert json.loads(hayai("plan", "-m", model, "--json").stdout)["speed_levers"] == []
    bench = json.loads(hayai("bench", "speed", "-m", model, "--steps", "2", "--repeats", "2",
                             "--levers", "step_cache=2,token_merging=0.5", "--json").stdout)
    levers = {row["lever"]: row for row in bench["levers"]}
    assert list(levers) == ["exact", "step_cache=2", "token_merging=0.5"]
    exact, merged = levers["exact"], levers["token_merging=0.5"]
    assert (exact["width"], exact["steps"], exact["family"], exact["threads"]) == (64, 2, "sd1", 1)
    assert exact["denoise_ratio"] == 1.0 and exact["psnr_db"] is None and exact["adherence_points"] is None
    assert 0 < merged["denoise_ratio"] and 0 < merged["ssim"] < 1 and merged["psnr_db"] > 10  # it changes pixels
    assert levers["step_cache=2"]["request"]["step_cache"] == 2
    assert len(bench["details"]["exact"]["time"]["rounds"]) == 2

    plan = json.loads(hayai("plan", "-m", model, "--steps", "2", "--json").stdout)
    assert [(m["lever"], m["denoise_ratio"], m["end_to_end_ratio"], m["psnr_db"], m["ssim"]) for m in plan["speed_levers"]] == [
        (m["lever"], m["denoise_ratio"], m["end_to_end_ratio"], m["psnr_db"], m["ssim"]) for m in bench["levers"]]
    shown = hayai("plan", "-m", model, "--steps", "2").stdout
    assert "speed levers (measured here on" in shown and "64 px, 2 steps" in shown
    assert f"{merged['denoise_ratio']:.2f}x" in shown and f"{merged['ssim']:.3f}" in shown and "not measured" in shown
    # measured here, not on a device planned for
    assert json.loads(hayai("plan", "-m", model, "--device", "RTX 4090 24GB", "--json").stdout)["speed_levers"] == []


def test_a_bad_lever_fails_before_anything_loads():
    done = hayai("bench", "speed", "--levers", "exact,step_cash=3", check=False)
    assert done.returncode == 2 and "'step_cash=3' is not FIELD=VALUE of a request field" in done.stderr


def test_adherence_is_measured_on_the_demo_model_only(tiny_folders):
    from hayai.demo.adherence import prompt_set
    from hayai.generation.engine import Engine

    engine = Engine(device="cpu")
    bench = bench_speed(engine, model=None, levers=["exact", "step_cache=2"], steps=3, repeats=1, seeds=1,
                        prompts=prompt_set()[:3])
    exact, cached = bench.measurements
    assert exact.model == "hayai-shapes" and bench.quality.startswith("adherence on the demo model")
    assert 0 <= exact.adherence_points <= 100 and cached.adherence_points is not None and exact.psnr_db is None
    assert bench.details["step_cache=2"]["quality"]["images"] == 3
    other = bench_speed(engine, model=str(tiny_folders[Family.SD1]), levers=["exact"], steps=2, repeats=1)
    assert other.measurements[0].adherence_points is None and "demo model only" in other.quality


# -- execution levers: on only where measured here to pay -----------------------------------------------------


def test_an_execution_lever_is_on_only_where_it_paid_and_kept_the_pixels():
    from hayai.memory.strategies import Strategy
    from hayai.speed.execution import choose

    def measured(ratio, psnr):
        return [_measurement("exact"), SpeedMeasurement(**{**_measurement("channels_last", ratio=ratio).__dict__,
                                                          "psnr_db": psnr})]

    assert choose(measured(0.8, 52.0)) == (frozenset({"channels_last"}), [
        "channels_last: on, 0.80x end to end, images 52.0 dB PSNR to the exact run's"])
    assert choose(measured(0.8, math.inf))[0] == {"channels_last"}
    for ratio, psnr, why in [(0.97, 60.0, "0.97x end to end (it pays below 0.95x)"),
                             (0.8, 31.0, "its images differ (31.0 dB PSNR to the exact run's; 40 needed)"),
                             (0.8, None, "its pixels were not compared (measured with --no-quality)")]:
        assert choose(measured(ratio, psnr)) == (frozenset(), [f"channels_last: off, {why}"])
    assert "not measured here at this size" in choose([_measurement("exact")])[1][0]
    streamed = Strategy(placement="group_offload", device="cuda", dtype="float16")
    assert choose(measured(0.8, 52.0), streamed)[0] == frozenset()


def test_the_engine_goes_by_the_measurements_made_here(tiny_folders, tmp_path):
    import numpy as np
    import torch

    from hayai.generation.engine import Engine
    from hayai.generation.imagefile import read_image_metadata
    from hayai.generation.request import GenerationRequest

    engine = Engine(device="cpu")
    model = str(tiny_folders[Family.SD1])
    request = GenerationRequest("a red circle", model=model, steps=2, seed=1, output_dir=str(tmp_path))

    def run(**options):
        result = engine.generate(request, engine.run_options(**options))
        weight = engine.load(model).pipe.unet.conv_in.weight
        image = result.images[0]
        return (np.asarray(image.image, dtype=np.int16), weight.is_contiguous(memory_format=torch.channels_last)
                and not weight.is_contiguous(), read_image_metadata(image.path).hayai.get("execution"), result)

    plain, converted, named, result = run()
    assert not converted and named is None  # nothing measured: the plain run
    paid = SpeedMeasurement(**{**_measurement("channels_last", width=64, steps=2, ratio=0.8).__dict__, "psnr_db": 55.0,
                               "model_hash": result.model_hash, "device_key": engine.device_spec.key})
    engine.store.record_speed([SpeedMeasurement(**{**paid.__dict__, "lever": "exact", "denoise_ratio": 1.0,
                                                   "end_to_end_ratio": 1.0, "psnr_db": None}), paid])
    faster, converted, named, _ = run()
    assert converted and named == ["channels_last"] and np.abs(faster - plain).max() <= 2
    again, converted, named, _ = run(execution=frozenset())  # a caller's set wins (the bench's exact run)
    assert not converted and named is None and np.array_equal(again, plain)
    plan = json.loads(hayai("plan", "-m", model, "--steps", "2", "--json").stdout)
    assert plan["execution"]["levers"] == ["channels_last"] and "0.80x end to end" in plan["execution"]["reasons"][0]


def test_the_bench_measures_an_execution_lever_against_the_plain_run(tiny_folders):
    model = str(tiny_folders[Family.SD1])
    bench = json.loads(hayai("bench", "speed", "-m", model, "--steps", "2", "--repeats", "1",
                             "--levers", "channels_last", "--json").stdout)
    exact, lever = bench["levers"]
    assert lever["lever"] == "channels_last" and lever["request"]["execution"] == ["channels_last"]
    assert "execution" not in exact["request"] and (lever["identical"] or lever["psnr_db"] > 40)
    shown = hayai("plan", "-m", model, "--steps", "2").stdout
    assert "execution: " in shown and "channels_last: " in shown
