"""What each kind of job is: how a request over HTTP becomes the job's spec (checked before it is queued),
and how the worker runs it. One class per kind, each calling the same library function as the CLI:
`Engine.generate`, `run_sweep`, `explore`, `train_lora`.

A job runs again after a server restart: a generation from the start with the seeds drawn when it was
queued; a sweep resumes in its folder (the cells finished are kept); a training run resumes from its
latest checkpoint.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hayai import paths
from hayai.errors import RequestError
from hayai.generation.request import MAX_SEED, GenerationRequest
from hayai.server.live import Live, LiveJob

__all__ = ["Outcome", "TASKS", "with_seed", "datasets_dir"]


@dataclass
class Outcome:
    status: str  # "done", "error", "interrupted"
    result: dict | None = None
    error: str | None = None
    images: list | None = None  # (PIL image, infotext) for a waiting A1111 client
    requeue: bool = False  # stopped by the server's shutdown: left 'running', the next start runs it again


@dataclass
class Context:
    engine: Any
    store: Any
    live: Live
    job: LiveJob
    stopping: threading.Event


def with_seed(request: GenerationRequest) -> GenerationRequest:
    """The request with its seed drawn now if it is -1, so the job makes the same images if it runs again."""
    import dataclasses

    if request.seed != -1:
        return request
    return dataclasses.replace(request, seed=random.SystemRandom().randint(0, MAX_SEED))


def datasets_dir() -> Path:
    """Training datasets the server may read: `$HAYAI_HOME/datasets/<name>` (a request names one, never a path)."""
    return paths.hayai_home() / "datasets"


class GenerateTask:
    kind = "generate"

    def run(self, spec: dict, attempts: int, job_id: str, api: str, options: dict, ctx: Context) -> Outcome:
        request = GenerationRequest.from_dict(spec)
        engine = ctx.engine
        # a job's own strategy, else the one `hayai serve --strategy` forces, else the planner's
        run_options = engine.run_options(strategy=options.get("strategy") or engine.forced_strategy,
                                         save=bool(options.get("save", True)), cancel=ctx.job.cancel,
                                         progress=lambda event: ctx.live.on_progress(ctx.job, event))
        result = engine.generate(request, run_options)
        if ctx.stopping.is_set() and result.interrupted:
            return Outcome("interrupted", requeue=True)
        payload = result.to_dict()
        for entry, image in zip(payload["images"], result.images):
            entry["infotext"] = image.infotext
        waiting = api == "a1111"  # an A1111 client takes the pixels from memory; a hayai job's are files
        return Outcome("interrupted" if result.interrupted else "done", payload,
                       "interrupted" if result.interrupted else None,
                       [(image.image, image.infotext) for image in result.images] if waiting else None)


class SweepTask:
    """`{"request": {...the base request...}, "x": "steps=4,8", "y": "cfg=2,7", "z": null, "strategy": null}`:
    the axes as `hayai sweep --x` takes them (A1111's X/Y/Z names)."""

    kind = "sweep"

    @staticmethod
    def spec(sweep: dict, check=None) -> dict:
        """The checked spec; `check(request)` is called on every cell's request (models and LoRAs an axis names)."""
        from hayai.sweep import make_plan, parse_axis

        unknown = sorted(set(sweep) - {"request", "x", "y", "z", "strategy"})
        if unknown:
            raise RequestError(f"sweep: unknown field(s) {', '.join(unknown)}; a sweep has request, x, y, z, strategy")
        axes = [parse_axis(sweep[name]) if sweep.get(name) else None for name in ("x", "y", "z")]
        if not any(axes):
            raise RequestError("sweep: give at least one axis, e.g. \"x\": \"steps=4,8,16\"")
        base = with_seed(GenerationRequest.from_dict(sweep["request"]))
        plan = make_plan(base, *axes, strategy=sweep.get("strategy"))  # refused now, not when it runs
        for cell in plan.cells:
            if check is not None:
                check(cell.request)
        return {**sweep, "request": base.to_dict()}

    def run(self, spec: dict, attempts: int, job_id: str, api: str, options: dict, ctx: Context) -> Outcome:
        from hayai.generation.options import Cancelled
        from hayai.sweep import make_plan, parse_axis, run_sweep

        engine = ctx.engine
        axes = [parse_axis(spec[name]) if spec.get(name) else None for name in ("x", "y", "z")]
        plan = make_plan(GenerationRequest.from_dict(spec["request"]), *axes, strategy=spec.get("strategy"),
                         device=engine.device_spec.torch_device)
        live = ctx.job

        def on_progress(progress) -> None:
            scale = 1000
            ctx.live.set_progress(live, round(progress.work_done / max(progress.work_total, 1e-9) * scale), scale, "sweep")
            ctx.live.add_event(live, {"type": "sweep", "cells_done": progress.cells_done,
                                      "cells_total": progress.cells_total, "eta_seconds": progress.eta_seconds,
                                      "detail": progress.detail, "resumed": progress.resumed})

        folder = paths.hayai_home() / "sweeps" / f"job-{job_id}"  # the job's own: a restart resumes it
        try:
            result = run_sweep(engine, plan, folder, progress=on_progress, cancel=live.cancel)
        except Cancelled:
            if ctx.stopping.is_set():
                return Outcome("interrupted", requeue=True)
            return Outcome("interrupted", {"folder": str(folder)}, "interrupted: the cells finished are kept in the folder")
        payload = result.to_dict()
        payload["rows"] = result.rows
        payload["files"] = [str(p) for p in (*result.grids, result.chart, result.csv, result.json) if p is not None]
        return Outcome("done", payload)


class ExploreTask:
    """`{"request": {...}, "count": 16}`: `count` seeds of one prompt (seed, seed+1, ...) and their contact
    sheet, as `hayai explore`; a seed worth keeping is then refined as a plain generation."""

    kind = "explore"

    @staticmethod
    def spec(explore: dict) -> dict:
        from hayai.sweep.explore import MAX_EXPLORE

        request = with_seed(GenerationRequest.from_dict(explore["request"]))
        count = explore.get("count", 16)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_EXPLORE:
            raise RequestError(f"explore: count={count!r} must be a whole number from 1 to {MAX_EXPLORE}")
        if count % request.batch_size:
            raise RequestError(f"explore: count={count} must be a multiple of batch_size={request.batch_size}")
        return {"request": request.to_dict(), "count": count}

    def run(self, spec: dict, attempts: int, job_id: str, api: str, options: dict, ctx: Context) -> Outcome:
        from hayai.sweep.explore import explore

        request = GenerationRequest.from_dict(spec["request"])
        result = explore(ctx.engine, request, spec["count"], progress=lambda event: ctx.live.on_progress(ctx.job, event),
                         cancel=ctx.job.cancel)
        if ctx.stopping.is_set() and result.result.interrupted:
            return Outcome("interrupted", requeue=True)
        payload = result.to_dict()
        for entry, image in zip(payload["images"], result.result.images):
            entry["infotext"] = image.infotext
        payload["files"] = [payload["contact_sheet"]] if payload["contact_sheet"] else []
        interrupted = result.result.interrupted
        return Outcome("interrupted" if interrupted else "done", payload, "interrupted" if interrupted else None)


class TrainTask:
    """`{"dataset": NAME, ...TrainConfig fields, "resume": false}`: the dataset is a folder in
    `$HAYAI_HOME/datasets`; `resume` continues the run folder's latest checkpoint (as `hayai train lora --resume`)."""

    kind = "train"
    NOT_OVER_HTTP = ("output_dir",)

    @staticmethod
    def spec(train: dict) -> dict:
        from hayai.training import TrainConfig

        train = dict(train)
        resume = train.pop("resume", False)
        if not isinstance(resume, bool):
            raise RequestError(f"train: resume={resume!r} must be true or false")
        refused = [name for name in TrainTask.NOT_OVER_HTTP if train.get(name) is not None]
        if refused:
            raise RequestError(f"train: {refused[0]} names a path on the server; the run folder is "
                               "$HAYAI_HOME/training/<output_name>")
        name = train.get("dataset") or ""
        if not name or "/" in name or "\\" in name or name.startswith((".", "~")):
            raise RequestError(f"train: dataset={name!r} must name a folder in {datasets_dir()} (GET /hayai/v1/datasets)")
        folder = datasets_dir() / name
        if not folder.is_dir():
            raise RequestError(f"train: no dataset {name!r} in {datasets_dir()} (GET /hayai/v1/datasets lists them)")
        config = TrainConfig.from_dict({**train, "dataset": str(folder)}, where="train")
        return {"config": config.to_dict(), "resume": resume}

    def run(self, spec: dict, attempts: int, job_id: str, api: str, options: dict, ctx: Context) -> Outcome:
        from hayai.training import TrainConfig, train_lora
        from hayai.training.checkpoint import latest_checkpoint

        config = TrainConfig.from_dict(spec["config"], where="train")
        resume = spec["resume"] or (attempts > 1 and latest_checkpoint(config.run_dir) is not None)
        ctx.engine.unload_all()  # training loads its own copy of the model, in float32: give it the room
        live = ctx.job

        def on_event(event) -> None:
            if event.total:
                ctx.live.set_progress(live, event.step, event.total, event.phase)
            ctx.live.add_event(live, {"type": "train", "phase": event.phase, "step": event.step, "total": event.total,
                                      "loss": event.loss, "lr": event.lr, "val_loss": event.val_loss,
                                      "message": event.message})

        result = train_lora(config, resume=resume, progress=on_event, should_stop=lambda: live.cancel.interrupted,
                            store=ctx.store)
        if result.status == "interrupted" and ctx.stopping.is_set():
            return Outcome("interrupted", requeue=True)
        payload = {"run_id": result.run_id, "status": result.status, "run_dir": str(result.run_dir),
                   "step": result.step, "total_steps": result.total_steps,
                   "lora_path": str(result.lora_path) if result.lora_path else None, "files": dict(result.files),
                   "losses": result.losses, "validation": result.validation, "findings": result.findings,
                   "timings": result.timings, "peak_memory_bytes": result.peak_memory_bytes}
        if result.status == "interrupted":
            return Outcome("interrupted", payload, "interrupted: a checkpoint was saved; submit it again with resume: true")
        return Outcome("done", payload)


TASKS = {task.kind: task for task in (GenerateTask(), SweepTask(), ExploreTask(), TrainTask())}
