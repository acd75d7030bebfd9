"""Running a sweep: every cell through `Engine.generate`, resumable, then the grid, tables and chart.

`run_sweep(engine, plan, folder)`:
0. holds the folder's lock (`lock.py`): a second sweep in a folder where one runs is refused;
1. writes the plan to `folder/sweep.json`, or finds the same plan there (same fingerprint) and resumes:
   the cells listed in `cells.jsonl` with their images on disk are not run again, and the plan stored
   first (its drawn seeds included) is the one used;
2. checks every strategy the cells force against this device, before any model loads;
3. runs the remaining cells, the ones that reload the model (checkpoint, strategy axes) grouped, each
   cell's record appended to `cells.jsonl` as it ends, with progress and an ETA for the whole sweep;
4. writes `results.csv`, `results.json`, one labelled grid per Z value and `chart.png`.
The sweep itself is logged in the history (kind "sweep"), and every cell as the generate run it is.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hayai import paths
from hayai.errors import RequestError
from hayai.generation.options import CancelToken, Cancelled
from hayai.store.recording import recorded_run
from hayai.sweep.axes import format_value
from hayai.sweep.lock import sweep_lock
from hayai.sweep.plan import SweepPlan
from hayai.sweep.records import append_state, cell_row, read_state, write_csv, write_json

__all__ = ["SweepProgress", "SweepResult", "run_sweep", "default_folder"]

PLAN_FILE = "sweep.json"
STATE_FILE = "cells.jsonl"


@dataclass(frozen=True)
class SweepProgress:
    cells_done: int  # finished cells, resumed ones included
    cells_total: int
    work_done: float  # relative work (see Cell.work), resumed cells included, the running cell in part
    work_total: float
    eta_seconds: float | None  # from this session's pace; None until some work is done
    detail: str  # the running cell's labels
    resumed: int = 0  # cells found finished when the sweep started


@dataclass
class SweepResult:
    plan: SweepPlan
    folder: Path
    rows: list[dict]  # one per cell, grid order
    ran: int  # cells run by this call
    resumed: int  # cells found finished
    grids: list[Path] = field(default_factory=list)
    csv: Path | None = None
    json: Path | None = None
    chart: Path | None = None
    run_id: int | None = None

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "cells": len(self.rows), "ran": self.ran, "resumed": self.resumed,
                "grids": [str(p) for p in self.grids], "csv": str(self.csv), "json": str(self.json),
                "chart": str(self.chart), "run_id": self.run_id}


def default_folder(plan: SweepPlan) -> Path:
    """`$HAYAI_HOME/sweeps/<prompt words>-<fingerprint>`: the same command finds the same folder (and resumes)."""
    from hayai.generation.saving import slug

    return paths.hayai_home() / "sweeps" / f"{slug(plan.base.prompt, 40)}-{plan.fingerprint[:10]}"


def _load_or_store_plan(plan: SweepPlan, folder: Path) -> SweepPlan:
    stored = folder / PLAN_FILE
    if stored.is_file():
        data = json.loads(stored.read_text(encoding="utf-8"))
        if data.get("fingerprint") != plan.fingerprint:
            raise RequestError(
                f"{folder} holds another sweep (different prompt, axes or settings); give this one its own "
                "--output folder, or pass --restart to discard that one"
            )
        return SweepPlan.from_dict(data)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(stored, plan.to_dict())
    return plan


def _with_images_folder(plan: SweepPlan, images: Path) -> SweepPlan:
    cells = tuple(dataclasses.replace(c, request=dataclasses.replace(c.request, output_dir=str(images))) for c in plan.cells)
    return dataclasses.replace(plan, cells=cells)


def _check_strategies(engine, plan: SweepPlan) -> None:
    for name in {cell.strategy for cell in plan.cells} - {None}:
        engine.strategy_named(name)


def _eta(started: float, work_done_here: float, work_left: float) -> float | None:
    if work_done_here <= 0:
        return None
    return (time.perf_counter() - started) / work_done_here * work_left


def run_sweep(engine, plan: SweepPlan, folder: Path | None = None, *, restart: bool = False,
              progress: Callable[[SweepProgress], None] | None = None, cancel: CancelToken | None = None) -> SweepResult:
    """Run (or resume) the sweep `plan` in `folder` (default: `default_folder(plan)`); one sweep per folder at a time.

    `cancel.interrupt()` stops it at the next denoising step: the cell then running is not recorded (a resume
    runs it again) and `Cancelled` is raised; `cancel.skip()` skips the cell's current batch."""
    folder = Path(folder).expanduser() if folder else default_folder(plan)
    with sweep_lock(folder):
        return _run_sweep(engine, plan, folder, restart, progress, cancel)


def _run_sweep(engine, plan: SweepPlan, folder: Path, restart: bool, progress, cancel=None) -> SweepResult:
    if restart:
        for name in (PLAN_FILE, STATE_FILE):
            (folder / name).unlink(missing_ok=True)
    plan = _with_images_folder(_load_or_store_plan(plan, folder), folder / "images")
    _check_strategies(engine, plan)
    emit = progress or (lambda event: None)
    done = read_state(folder / STATE_FILE)
    resumed = sum(cell.key in done for cell in plan.cells)
    total_work = sum(cell.work for cell in plan.cells)
    work_done = sum(cell.work for cell in plan.cells if cell.key in done)
    axis_names = {name: axis.kind.key for name, axis in plan.axes.items()}
    record = {**{k: v for k, v in plan.to_dict().items() if k != "cells"}, "cells": len(plan.cells), "folder": str(folder)}
    ran, started, work_here = 0, time.perf_counter(), 0.0
    with recorded_run(engine.store, "sweep", request=record, model=plan.base.model or "", model_hash=None,
                      device=engine.device_spec.torch_device) as run:
        try:
            emit(SweepProgress(len(done), len(plan.cells), work_done, total_work, None, "", resumed))
            for cell in plan.run_order():
                if cell.key in done:
                    continue
                detail = ", ".join(cell.labels)

                def on_event(event, cell=cell, detail=detail):
                    if event.phase == "denoise" and event.total:
                        part = cell.work * event.done / event.total
                        emit(SweepProgress(len(done), len(plan.cells), work_done + part, total_work,
                                           _eta(started, work_here + part, total_work - work_done - part), detail, resumed))

                _remove_partial(folder / "images", cell.key)
                strategy = cell.strategy if cell.strategy is not None else plan.strategy
                options = engine.run_options(strategy=strategy or engine.forced_strategy, progress=on_event, cancel=cancel)
                result = engine.generate(cell.request, options)
                if result.interrupted:
                    raise Cancelled("interrupt")  # the cell is not whole: a resume runs it again
                row = cell_row(cell, result, axis_names)
                append_state(folder / STATE_FILE, row)
                done[cell.key] = row
                ran += 1
                work_done += cell.work
                work_here += cell.work
                emit(SweepProgress(len(done), len(plan.cells), work_done, total_work,
                                   _eta(started, work_here, total_work - work_done), detail, resumed))
            rows = [done[cell.key] for cell in plan.cells]
            outputs = write_outputs(plan, rows, folder)
            for path in outputs:
                run.image(path, plan.base.seed)  # the sweep's own files; each cell's images are in its generate run
        finally:
            run.seeds = sorted({s for row in done.values() for s in row["seeds"]})
            run.timings = {"seconds": round(time.perf_counter() - started, 4)}
            run.peak_memory_bytes = max((row["peak_memory_bytes"] or 0 for row in done.values()), default=None)
            run.events = [{"cells": len(plan.cells), "ran": ran, "resumed": resumed}]
    csv_path, json_path, chart_path, *grids = outputs
    return SweepResult(plan, folder, rows, ran, resumed, grids, csv_path, json_path, chart_path, run.run_id)


def _remove_partial(images: Path, key: str) -> None:
    """Images of a cell that never reached the state file (killed between saving and recording it)."""
    if images.is_dir():
        for stale in images.glob(f"{key}-*"):
            stale.unlink()


def write_outputs(plan: SweepPlan, rows: list[dict], folder: Path) -> list[Path]:
    """results.csv, results.json, chart.png and the grids; returns their paths (csv, json, chart, grids...)."""
    from hayai.sweep.chart import time_chart

    csv_path, json_path = folder / "results.csv", folder / "results.json"
    write_csv(csv_path, rows)
    write_json(json_path, {"plan": {k: v for k, v in plan.to_dict().items() if k != "cells"}, "rows": rows})
    x = plan.axes["x"]
    numeric = x.kind.type in ("int", "float")
    x_values = list(x.values) if numeric else [format_value(x.kind, v) for v in x.values]
    chart = time_chart(rows, x_values, x.kind.label, folder / "chart.png", title=_title(plan, rows))
    return [csv_path, json_path, chart, *draw_grids(plan, rows, folder)]


def _title(plan: SweepPlan, rows: list[dict]) -> str:
    base = plan.base
    fixed = f"seed {base.seed}" if all(a.kind.key != "seed" for a in plan.axes.values()) else ""
    models = "" if any(a.kind.key == "model" for a in plan.axes.values()) else rows[0]["model_name"]
    return " | ".join(part for part in (base.prompt[:80], models, fixed) if part)


def draw_grids(plan: SweepPlan, rows: list[dict], folder: Path) -> list[Path]:
    """One labelled grid per Z value: X labels over the columns, Y labels by the rows, each cell's time under it."""
    from PIL import Image

    from hayai.sweep.grid import cell_image, labelled_grid

    columns, nrows, grids = plan.shape()
    by_cell = {(row["iz"], row["iy"], row["ix"]): row for row in rows}
    x_labels = plan.axes["x"].labels
    y_labels = plan.axes["y"].labels if "y" in plan.axes else [""]
    paths_out = []
    for iz in range(grids):
        cells, notes = [], []
        for iy in range(nrows):
            line, line_notes = [], []
            for ix in range(columns):
                row = by_cell[(iz, iy, ix)]
                images = [Image.open(p) for p in row["images"]]
                line.append(cell_image(images))
                line_notes.append(f"{row['seconds']:.2f} s")
            cells.append(line)
            notes.append(line_notes)
        title = plan.axes["z"].labels[iz] if "z" in plan.axes else ""
        path = folder / (f"grid-z{iz}.png" if "z" in plan.axes else "grid.png")
        labelled_grid(cells, x_labels, y_labels, notes=notes, title=title).save(path)
        paths_out.append(path)
    return paths_out
