"""Running sweeps on the tiny SD1 pipeline: images, grid, CSV/JSON rows, chart, resume, Z grids, strategies."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from hayai.errors import RequestError
from hayai.generation.engine import Engine
from hayai.generation.request import GenerationRequest
from hayai.models.families import Family
from hayai.sweep import make_plan, parse_axis, run_sweep
from hayai.sweep.records import adherence

CAPTION = "a small red circle at the top left on a white background"
PHASE_COLUMNS = ["load_s", "text_encode_s", "denoise_s", "vae_decode_s", "save_s"]


def _base(tiny_folders, **kw):
    return GenerationRequest(CAPTION, model=str(tiny_folders[Family.SD1]), width=64, height=64, seed=42, **kw)


def _plan(tiny_folders, *axes, **kw):
    return make_plan(_base(tiny_folders), *(parse_axis(a) for a in axes), **kw)


class StopAfter:
    """A progress callback that interrupts the sweep (as Ctrl-C does) once `cells` cells have finished."""

    def __init__(self, cells: int):
        self.cells = cells

    def __call__(self, event):
        if event.cells_done - event.resumed >= self.cells:
            raise KeyboardInterrupt


def test_a_sweep_makes_every_image_the_grid_the_tables_and_the_chart(tiny_folders, tmp_path):
    plan = _plan(tiny_folders, "steps=2,3,4", "cfg=2,7")
    events = []
    result = run_sweep(Engine(), plan, tmp_path / "sweep", progress=events.append)

    assert result.ran == 6 and result.resumed == 0
    images = sorted((tmp_path / "sweep" / "images").glob("*.png"))
    assert [p.name for p in images] == [f"z0-y{y}-x{x}-42.png" for y in range(2) for x in range(3)]
    with open(result.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["x"], r["y"]) for r in rows] == [(f"Steps: {s}", f"CFG Scale: {c}") for c in (2, 7) for s in (2, 3, 4)]
    assert [int(r["steps"]) for r in rows] == [2, 3, 4, 2, 3, 4] and {r["seed"] for r in rows} == {"42"}
    for row in rows:  # per-phase timings, the cell's time, peak memory, every request parameter, the image
        assert all(float(row[c]) >= 0 for c in PHASE_COLUMNS) and float(row["denoise_s"]) > 0
        seconds = sum(float(row[c]) for c in ("text_encode_s", "denoise_s", "vae_decode_s"))
        assert float(row["seconds"]) == pytest.approx(seconds, abs=1e-3)
        assert int(row["peak_memory_bytes"]) > 0 and row["sampler"] and row["width"] == "64"
        assert 0.0 <= float(row["adherence"]) <= 1.0  # a shapes caption: the demo adherence score applies
        assert row["images"].endswith(f"{row['cell']}-42.png")
    assert float(rows[0]["load_s"]) > float(rows[1]["load_s"])  # the model loads once, in the first cell

    data = json.loads(result.json.read_text())
    assert len(data["rows"]) == 6 and data["rows"][5]["request"]["cfg_scale"] == 7.0
    assert data["plan"]["axes"]["x"]["values"] == [2, 3, 4]

    grid = Image.open(result.grids[0])
    assert result.grids[0].name == "grid.png" and grid.width > 3 * 64 and grid.height > 2 * 64
    cell = np.asarray(Image.open(images[0]).convert("RGB"))
    scaled = cell.repeat(3, axis=0).repeat(3, axis=1)  # 64 px cells are drawn 3x, nearest-neighbour
    pixels = np.asarray(grid.convert("RGB"))
    assert any(np.array_equal(pixels[y : y + 192, x : x + 192], scaled)  # the first cell sits under the labels
               for y in range(80) for x in range(200) if pixels[y, x].tolist() == scaled[0, 0].tolist())
    assert Image.open(result.chart).format == "PNG"

    assert events[-1].cells_done == 6 and events[-1].eta_seconds == 0
    assert all(e.eta_seconds is None or e.eta_seconds >= 0 for e in events)
    assert Engine().store.runs(kind="sweep")[0].status == "ok"


def test_an_interrupted_sweep_resumes_without_redoing_finished_cells(tiny_folders, tmp_path):
    folder = tmp_path / "sweep"
    plan = _plan(tiny_folders, "steps=2,3", "cfg=2,7")
    engine = Engine()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(engine, plan, folder, progress=StopAfter(2))
    done = sorted((folder / "images").glob("*.png"))
    assert len(done) == 2 and len((folder / "cells.jsonl").read_text().splitlines()) == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in done}
    with open(folder / "cells.jsonl", "a") as f:
        f.write('{"cell": "z0-y1-x0", "images": [')  # a line cut short by a kill is not a finished cell

    again = make_plan(_base(tiny_folders), parse_axis("steps=2,3"), parse_axis("cfg=2,7"))  # the same command
    result = run_sweep(Engine(), again, folder)
    assert (result.resumed, result.ran) == (2, 2)
    assert {p.name: p.stat().st_mtime_ns for p in done} == stamps  # not regenerated
    assert len(list((folder / "images").glob("*.png"))) == 4 and len(result.rows) == 4
    assert len(engine.store.runs(kind="generate")) == 4  # 2 + 2 generate runs in all, not 2 + 4
    assert [r.status for r in engine.store.runs(kind="sweep")] == ["ok", "interrupted"]

    with pytest.raises(RequestError, match="holds another sweep .* --restart"):
        run_sweep(Engine(), _plan(tiny_folders, "steps=2,5"), folder)


def test_a_random_seed_survives_the_resume(tiny_folders, tmp_path):
    base = GenerationRequest(CAPTION, model=str(tiny_folders[Family.SD1]), width=64, height=64, steps=2)  # seed -1
    with pytest.raises(KeyboardInterrupt):
        run_sweep(Engine(), make_plan(base, parse_axis("cfg=2,7")), tmp_path / "s", progress=StopAfter(1))
    result = run_sweep(Engine(), make_plan(base, parse_axis("cfg=2,7")), tmp_path / "s")  # draws another seed...
    assert result.resumed == 1 and len({row["seed"] for row in result.rows}) == 1  # ...but the stored plan wins


def test_z_axis_grids_and_a_strategy_axis(tiny_folders, tmp_path):
    plan = _plan(tiny_folders, "strategy=cpu-float32,cpu-float32+vae-tiling", "steps=2", "cfg=2,7")
    result = run_sweep(Engine(device="cpu"), plan, tmp_path / "s")
    assert [p.name for p in result.grids] == ["grid-z0.png", "grid-z1.png"]
    assert [row["strategy"] for row in result.rows] == ["cpu-float32", "cpu-float32+vae-tiling"] * 2
    assert [row["z"] for row in result.rows] == ["CFG Scale: 2", "CFG Scale: 2", "CFG Scale: 7", "CFG Scale: 7"]


def test_an_unknown_strategy_fails_before_anything_runs(tiny_folders, tmp_path):
    engine = Engine(device="cpu")
    with pytest.raises(RequestError, match="strategy='resident' is not available on this device; choose one of: cpu-float32"):
        run_sweep(engine, _plan(tiny_folders, "strategy=cpu-float32,resident"), tmp_path / "s")
    assert engine.store.runs() == []


def test_adherence_scores_shapes_captions_only():
    from hayai.demo.shapes import Scene, render

    scene = Scene("triangle", "blue", "large", "center", "grey")
    image = render(scene)
    assert adherence([image], scene.caption) == 1.0
    assert adherence([image], "a large red triangle in the center on a grey background") == 0.8  # colour missed
    assert adherence([image], "a lighthouse at dusk") is None
