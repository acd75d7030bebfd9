"""benchmarks/gpu_check.py, dry-run on the CPU so the script a lent GPU runs cannot rot: every stage writes
its lines with the keys the calibration reads, a stage past its deadline is recorded as a timeout and the
next one still runs, and the fitted time model is in the form hayai.memory.costs reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402

from hayai.memory import costs  # noqa: E402


def _by_stage(out: Path) -> dict[str, list[dict]]:
    lines = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    grouped: dict[str, list[dict]] = {}
    for line in lines:
        grouped.setdefault(line["stage"], []).append(line)
    return grouped


def _items(lines: list[dict], *keys: str) -> list[dict]:
    """The result lines (not the status line) that have every key in `keys`."""
    return [line for line in lines if "item" in line and all(k in line for k in keys)]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check_out")
    summary = gpu_check.main(["--dry-run", "--out", str(out)])
    return out, summary


@pytest.mark.slow
def test_every_stage_of_the_dry_run_writes_its_results_and_an_ok_status(dry_run):
    out, summary = dry_run
    assert summary["stages"] == {name: "ok" for name in gpu_check.STAGE_NAMES}
    stages = _by_stage(out)
    for name in gpu_check.STAGE_NAMES:
        assert stages[name][-1]["status"] == "ok" and "seconds" in stages[name][-1], stages[name][-1]
    assert _items(stages["facts"], "torch", "packages", "hardware_probe")
    link = {line["item"]: line for line in stages["link"] if "item" in line}
    assert link["copies"]["gbps"]["host_copy"] > 0
    assert link["sdpa"]["backends"]["MATH"]["available"]
    assert link["compute"]["launch_seconds"] > 0 and link["compute"]["matmul_tflops"] > 0
    # resident: per arch the placement and phase peaks against the planner's, then three timed sizes
    peaks = _items(stages["resident"], "phase_peak_bytes", "predicted_phase_bytes", "cold")
    assert [line["arch"] for line in peaks] == ["sd15", "sdxl", "sd35m"]
    for line in peaks:
        assert set(line["phase_peak_bytes"]) == {"text_encode", "denoise", "vae_decode"}
        assert line["cold"]["placement_peak_bytes"] > 0 and set(line["phase_error"]) == set(line["phase_peak_bytes"])
    points = _items(stages["resident"], "fit_point", "s_per_step", "flops_per_step", "predicted_s_per_step")
    assert len(points) == 9 and len({p["size"] for p in points if p["arch"] == "sd15"}) == 3
    assert len(_items(stages["resident"], "left_bytes")) == 3
    placements = _items(stages["offload"], "strategy", "placement_peak_bytes", "phase_peak_bytes", "s_per_step",
                        "host_peak_bytes", "left_bytes")
    assert [p["strategy"] for p in placements] == ["cpu-float32+vae-tiling", "cpu-float32+vae-tiling+split"]
    # ladder: the injected out-of-memory error steps the forced strategy down, and the run finishes
    for line in _items(stages["ladder"], "events", "final_strategy"):
        assert line["status"] == "ok" and line["events"][0]["event"] == "out_of_memory"
        assert line["final_strategy"] != line["forced"] == line["events"][0]["strategy"]
    train, = _items(stages["train"], "cache_peak_bytes", "step_peak_bytes", "predicted_cache_peak_bytes")
    assert train["status"] == "ok" and train["samples_written"] and train["cache_peak_bytes"] > 0
    pytest_line, = _items(stages["pytest"], "summary")
    assert pytest_line["returncode"] == 0 and "skipped" in pytest_line["summary"]
    compiled, = _items(stages["compile"], "eager_s_per_step", "compiled_s_per_step", "speedup")
    levers = _items(stages["levers"], "lever", "end_to_end_ratio", "denoise_ratio", "psnr_db")
    assert {line["lever"] for line in levers} >= {"exact", "speed=balanced", "channels_last", "token_merging=0.5"}
    assert compiled["speedup"] > 0
    assert json.loads((out / "summary.json").read_text())["stages"] == summary["stages"]


@pytest.mark.slow
def test_the_fitted_time_model_is_what_costs_reads(dry_run, monkeypatch):
    out, _ = dry_run
    fitted = json.loads((out / "time_model.json").read_text())
    assert fitted["calibrated"] and "resident" in fitted["fitted_from"] and len(fitted["points"]) == 9
    monkeypatch.setattr(costs, "CALIBRATION_FILE", out / "time_model.json")
    costs.time_model.cache_clear()
    try:
        for kind in ("unet", "mmdit"):
            assert costs.efficiency("cpu", kind) == fitted["efficiency"]["cpu"][kind]
            assert 0 < costs.efficiency("cpu", kind) <= 1
            assert costs.efficiency("datacenter", kind) == costs.TIME_MODEL["efficiency"]["datacenter"][kind]  # not fitted here
        assert costs.time_model()["launches_per_step"] == fitted["launches_per_step"]
    finally:
        monkeypatch.undo()
        costs.time_model.cache_clear()


def test_a_stage_past_its_deadline_is_a_timeout_and_the_next_stage_runs(tmp_path):
    # a deadline of 0: a warm machine finished the facts within 10 ms, so 0.01 s raced the stage
    summary = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--stages", "facts,link", "--deadline", "facts=0"])
    assert summary["stages"] == {"facts": "timeout", "link": "ok"}
    stages = _by_stage(tmp_path)
    assert stages["facts"] == [{"stage": "facts", "status": "timeout", "deadline_s": 0.0, "seconds": stages["facts"][0]["seconds"]}]
    assert _items(stages["link"], "gbps") and stages["link"][-1]["status"] == "ok"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a run without CUDA records")
def test_without_cuda_a_real_run_skips_the_stages_that_need_it(tmp_path):
    summary = gpu_check.main(["--out", str(tmp_path), "--stages", "facts,link,resident"])
    assert summary["stages"] == {"facts": "ok", "link": "skipped (no CUDA)", "resident": "skipped (no CUDA)"}
    assert not (tmp_path / "time_model.json").exists()


def test_a_line_cut_short_by_a_killed_stage_costs_only_itself(tmp_path):
    jsonl = tmp_path / "gpu_check.jsonl"
    jsonl.write_text('{"stage": "facts", "item": "machine"}\n{"stage": "resident", "item": "sd15@5')  # killed mid-write
    gpu_check._append(jsonl, {"stage": "resident", "status": "timeout"})
    assert gpu_check.read_lines(jsonl) == [{"stage": "facts", "item": "machine"}, {"stage": "resident", "status": "timeout"}]
