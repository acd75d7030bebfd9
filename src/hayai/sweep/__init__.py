"""Sweeps, seed exploration and refinement: measure trade-offs instead of guessing.

    from hayai import Engine, GenerationRequest
    from hayai.sweep import make_plan, parse_axis, run_sweep

    plan = make_plan(GenerationRequest("a red circle", seed=42), parse_axis("steps=5,10,20"), parse_axis("cfg=2,7"))
    result = run_sweep(Engine(), plan)     # grid.png, results.csv/json, chart.png in result.folder

Modules: `axes` (A1111 X/Y/Z value syntax, pure), `plan` (cells from axes, pure), `run` (running and
resuming), `records` (rows, state file, CSV/JSON), `grid` (labelled grids, contact sheets), `chart`
(matplotlib), `explore` (many seeds, then one refined).
"""

from hayai.sweep.axes import AXES, Axis, find_axis, parse_axis, parse_values
from hayai.sweep.explore import ExploreResult, explore, refine_request
from hayai.sweep.plan import Cell, SweepPlan, make_plan
from hayai.sweep.run import SweepProgress, SweepResult, default_folder, run_sweep

__all__ = [
    "AXES",
    "Axis",
    "Cell",
    "ExploreResult",
    "SweepPlan",
    "SweepProgress",
    "SweepResult",
    "default_folder",
    "explore",
    "find_axis",
    "make_plan",
    "parse_axis",
    "parse_values",
    "refine_request",
    "run_sweep",
]
