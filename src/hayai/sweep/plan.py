"""From a base request and up to three axes to the cells of a sweep. Pure: no model, no files.

Every cell is a full `GenerationRequest` (checked when it is made, so a bad value fails before any
model loads) plus the execution strategy it forces, if any. The seed is the same for every cell
unless the seed is an axis: a random base seed (-1) is drawn once here, and -1 on a seed axis draws
one per value, as A1111's X/Y/Z plot does.

A plan is plain data with a fingerprint of what the user asked for, so a sweep folder can tell
whether a new command is the same sweep (resume it) or another one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass

from hayai.errors import RequestError
from hayai.generation.request import MAX_SEED, GenerationRequest
from hayai.sweep.axes import Axis, find_axis

__all__ = ["Cell", "SweepPlan", "make_plan", "AUTO_STRATEGY"]

AUTO_STRATEGY = "auto"  # on a strategy axis: the planner's choice


@dataclass(frozen=True)
class Cell:
    ix: int
    iy: int
    iz: int
    request: GenerationRequest
    strategy: str | None  # a strategy name to force, or None for the planner's choice
    labels: tuple[str, ...]  # "Steps: 10", "CFG Scale: 7", ... one per axis in use (x, y, z)

    @property
    def key(self) -> str:
        """Stable name of the cell: its images are "<key>-<seed>.png", its state line carries it."""
        return f"z{self.iz}-y{self.iy}-x{self.ix}"

    @property
    def work(self) -> float:
        """Relative cost, for the ETA: denoiser passes x pixels (CFG above 1 doubles the passes)."""
        r = self.request
        pixels = (r.width or 512) * (r.height or 512) / 512**2
        steps = r.steps or 20  # unset: the model's recommendation, about this
        return steps * r.total_images * pixels * (2 if (r.cfg_scale is None or r.cfg_scale > 1) else 1)

    def to_dict(self) -> dict:
        return {"ix": self.ix, "iy": self.iy, "iz": self.iz, "request": self.request.to_dict(),
                "strategy": self.strategy, "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, data: dict) -> Cell:
        return cls(data["ix"], data["iy"], data["iz"], GenerationRequest.from_dict(data["request"]), data["strategy"],
                   tuple(data["labels"]))


@dataclass(frozen=True)
class SweepPlan:
    base: GenerationRequest  # the request every cell starts from, its seed drawn if it was -1
    axes: dict[str, Axis]  # "x", "y", "z" -> axis (only those in use); seed axes hold drawn seeds
    strategy: str | None  # the strategy forced for cells no strategy axis sets (None: the planner's)
    cells: tuple[Cell, ...]  # grid order: z, then y (rows), then x (columns)
    fingerprint: str  # of what was asked, before any seed was drawn

    def shape(self) -> tuple[int, int, int]:
        """(columns, rows, grids)."""
        return tuple(len(self.axes[a].values) if a in self.axes else 1 for a in ("x", "y", "z"))

    def run_order(self) -> list[Cell]:
        """Cells in the order to run them: the axes that reload the model (checkpoint, strategy) change
        least often, as A1111 puts a checkpoint axis outermost; otherwise grid order."""
        slow = [a for a, axis in self.axes.items() if axis.kind.engine_level]

        def key(cell: Cell):
            return tuple(getattr(cell, "i" + a) for a in sorted(slow))

        return sorted(self.cells, key=key)  # stable: grid order within

    def to_dict(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "base": self.base.to_dict(),
            "axes": {name: axis.to_dict() for name, axis in self.axes.items()},
            "strategy": self.strategy,
            "cells": [cell.to_dict() for cell in self.cells],
        }

    @classmethod
    def from_dict(cls, data: dict) -> SweepPlan:
        from hayai.sweep.axes import Axis

        axes = {}
        for name, axis in data["axes"].items():
            kind = find_axis(axis["axis"])
            values = tuple(tuple(v) if isinstance(v, list) else v for v in axis["values"])
            axes[name] = Axis(kind, values, axis["text"])
        return cls(GenerationRequest.from_dict(data["base"]), axes, data["strategy"],
                   tuple(Cell.from_dict(c) for c in data["cells"]), data["fingerprint"])


def fingerprint(base: GenerationRequest, axes: dict[str, Axis], strategy: str | None, device: str = "") -> str:
    """What identifies a sweep: the base request as given, the axes as written, the strategy and device."""
    asked = {"base": base.to_dict(), "axes": {n: [a.kind.key, a.text] for n, a in sorted(axes.items())},
             "strategy": strategy, "device": device}
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


def make_plan(base: GenerationRequest, x: Axis | None = None, y: Axis | None = None, z: Axis | None = None, *,
              strategy: str | None = None, device: str = "", rng: random.Random | None = None) -> SweepPlan:
    """The cells of a sweep over up to three axes (X: columns, Y: rows, Z: one grid per value)."""
    axes = {name: axis for name, axis in (("x", x), ("y", y), ("z", z)) if axis is not None}
    _check_axes(base, axes)
    stamp = fingerprint(base, axes, strategy, device)
    rng = rng or random.SystemRandom()
    seeds_drawn = base.seed < 0 and not any(a.kind.key == "seed" for a in axes.values())
    if seeds_drawn:
        base = dataclasses.replace(base, seed=rng.randint(0, MAX_SEED))
    axes = {name: _draw_seeds(axis, rng) for name, axis in axes.items()}
    columns, rows, grids = (axes[a].values if a in axes else (None,) for a in ("x", "y", "z"))
    cells = []
    for iz, zv in enumerate(grids):
        for iy, yv in enumerate(rows):
            for ix, xv in enumerate(columns):
                chosen = [(axes[a], v) for a, v in (("x", xv), ("y", yv), ("z", zv)) if a in axes]
                cells.append(_cell(base, strategy, ix, iy, iz, chosen))
    return SweepPlan(base, axes, strategy, tuple(cells), stamp)


def _draw_seeds(axis: Axis, rng: random.Random) -> Axis:
    if axis.kind.key != "seed":
        return axis
    return dataclasses.replace(axis, values=tuple(rng.randint(0, MAX_SEED) if v == -1 else v for v in axis.values))


def _check_axes(base: GenerationRequest, axes: dict[str, Axis]) -> None:
    keys = [axis.kind.key for axis in axes.values()]
    for key in set(keys):
        if keys.count(key) > 1:
            raise RequestError(f"two axes vary {find_axis(key).label!r}; put all its values on one axis")
    if "size" in keys and ({"width", "height"} & set(keys)):
        raise RequestError("a Size axis and a Width/Height axis both set the size; use one of them")
    if "lora_weight" in keys and not base.loras:
        raise RequestError("a LoRA weight axis needs a LoRA to weigh: add --lora NAME (every --lora LoRA gets the axis's weight)")
    for axis in axes.values():
        if axis.kind.key == "prompt_sr":
            search = axis.values[0]
            if search not in base.prompt and search not in base.negative_prompt:
                raise RequestError(f"Prompt S/R axis: the first value {search!r} is what gets replaced, and it is in "
                                   "neither the prompt nor the negative prompt; start the list with a word of the prompt")


def _cell(base: GenerationRequest, strategy: str | None, ix: int, iy: int, iz: int, chosen: list) -> Cell:
    updates: dict = {}
    for axis, value in chosen:
        key = axis.kind.key
        if key == "size":
            updates["width"], updates["height"] = value
        elif key == "lora_weight":
            from hayai.lora import LoraSpec

            updates["loras"] = tuple(f"{LoraSpec.parse(spec).name}:{value:g}" for spec in base.loras)
        elif key == "prompt_sr":
            search = axis.values[0]
            updates["prompt"] = base.prompt.replace(search, value)
            updates["negative_prompt"] = base.negative_prompt.replace(search, value)
        elif key == "strategy":
            strategy = None if value.lower() == AUTO_STRATEGY else value
        elif axis.kind.type == "float":
            updates[key] = float(value)
        else:
            updates[key] = value
    cell_key = f"z{iz}-y{iy}-x{ix}"
    try:
        request = dataclasses.replace(base, filename_pattern=f"{cell_key}-{{seed}}", **updates)
    except RequestError as error:
        labels = ", ".join(axis.labels[axis.values.index(value)] for axis, value in chosen)
        raise RequestError(f"sweep cell {labels}: {error}") from None
    labels = tuple(axis.labels[axis.values.index(value)] for axis, value in chosen)
    return Cell(ix, iy, iz, request, strategy, labels)
