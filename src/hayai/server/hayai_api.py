"""hayai's own API (`/hayai/v1`): what A1111's lacks. A job is submitted and answered at once with its id;
its state, queue position, progress, plan and images are read when the client likes, or followed as a
stream of server-sent events. The request fields are the CLI's (the one field table), so a job here and
`hayai generate` with the same values make the same images."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from hayai import __version__, paths
from hayai.errors import HayaiError
from hayai.generation.fields import FIELDS
from hayai.server.app import submit
from hayai.server.catalogs import check_model
from hayai.server.requests import NOT_OVER_HTTP, check_request, queued_request

router = APIRouter(prefix="/hayai/v1", tags=["hayai API"])

_TYPES = {"str": Optional[str], "int": Optional[int], "float": Optional[float], "bool": Optional[bool],
          "sizes": Optional[list[int]], "strs": Optional[list[str]]}
_IMAGE_HELP = {"init_image": "The image to start from, as base64 (img2img, inpainting).",
               "mask": "Inpainting mask as base64: white = redraw."}

HayaiRequest = create_model(
    "HayaiRequest", __config__=ConfigDict(extra="forbid"),
    **{spec.name: (_TYPES[spec.type] if spec.name != "prompt" else str,
                   Field(... if spec.name == "prompt" else None,
                         description=_IMAGE_HELP.get(spec.name, spec.help.replace("\\[", "["))))
       for spec in FIELDS if spec.name not in NOT_OVER_HTTP},
)


JOB_BODIES = ("request", "sweep", "explore", "train")  # the keys of a job submission, one per kind


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request: HayaiRequest
    x: Optional[str] = Field(None, description="An axis as `hayai sweep --x` takes it: NAME=VALUES, e.g. steps=4,8,16.")
    y: Optional[str] = None
    z: Optional[str] = None
    strategy: Optional[str] = None


class ExploreSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request: HayaiRequest
    count: int = Field(16, ge=1, le=1024, description="Seeds to try: seed, seed+1, ... (a multiple of batch_size).")


class JobSubmission(BaseModel):
    """Exactly one of `request` (make images), `sweep` (an X/Y/Z grid), `explore` (many seeds of one prompt and
    their contact sheet) or `train` (a LoRA training run)."""

    model_config = ConfigDict(extra="forbid")
    request: Optional[HayaiRequest] = None
    sweep: Optional[SweepSpec] = None
    explore: Optional[ExploreSpec] = None
    train: Optional[dict[str, Any]] = Field(None, description="TrainConfig fields (`hayai train lora --help`); "
                                            "dataset names a folder of $HAYAI_HOME/datasets; resume: true continues "
                                            "the run's latest checkpoint.")
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first; equal priorities run in order.")
    strategy: Optional[str] = Field(None, description="Force an execution strategy (see /hayai/v1/plan).")


def _state(request: Request):
    return request.app.state.hayai


def _fields(body: HayaiRequest) -> tuple[dict, dict]:
    fields = {key: value for key, value in body.model_dump(exclude_unset=True).items() if value is not None}
    images = {name: fields.pop(name) for name in ("init_image", "mask") if name in fields}
    return fields, images


@router.get("/health")
def health(request: Request):
    state = _state(request)
    return {"status": "ok", "version": __version__, "queued": state.store.count_jobs("queued"),
            "running": state.live.current.id if state.live.current else None}


@router.post("/jobs", status_code=202)
async def create_job(request: Request, body: JobSubmission,
                     idempotency_key: Optional[str] = Header(None, max_length=200,
                                                             description="A retry with the same key returns the same job.")):
    state = _state(request)
    given = [name for name in JOB_BODIES if getattr(body, name) is not None]
    if len(given) != 1:
        raise HTTPException(422, "send exactly one of request (images), sweep, explore or train")
    kind, spec = await asyncio.to_thread(job_spec, state, given[0], body)
    if body.strategy is not None:
        state.engine.strategy_named(body.strategy)  # refused now, not when the job runs
    job, created = submit(state, kind, spec, api="hayai", options={"save": True, "strategy": body.strategy},
                          submitted=body.model_dump(mode="json", exclude_unset=True), priority=body.priority,
                          idempotency_key=idempotency_key)
    return JSONResponse(_view(state, job), status_code=202 if created else 200)


def job_spec(state, given: str, body: JobSubmission) -> tuple[str, dict]:
    """The checked spec of the job the body asks for (decoding and keeping input images, off the event loop)."""
    from hayai.server.tasks import ExploreTask, SweepTask, TrainTask, with_seed

    if given == "train":
        spec = TrainTask.spec(body.train)
        if spec["config"].get("model"):
            check_model(state.catalog, spec["config"]["model"])
        return "train", spec
    source = body.request if given == "request" else getattr(body, given).request
    fields, images = _fields(source)
    queued = queued_request(fields, images=images)
    check_request(state.catalog, queued)
    if given == "request":
        return "generate", with_seed(queued).to_dict()
    if given == "explore":
        return "explore", ExploreTask.spec({"request": queued.to_dict(), "count": body.explore.count})
    sweep = body.sweep.model_dump(exclude_unset=True)
    spec = SweepTask.spec({**sweep, "request": queued.to_dict()}, check=lambda cell: check_request(state.catalog, cell))
    return "sweep", spec


@router.get("/jobs")
def list_jobs(request: Request, status: Optional[str] = None, limit: int = 100):
    from hayai.store.jobs import JOB_STATUSES

    if status is not None and status not in JOB_STATUSES:
        raise HTTPException(400, f"status={status!r} must be one of: {', '.join(JOB_STATUSES)}")
    state = _state(request)
    jobs = state.store.jobs(statuses=(status,) if status else (), limit=max(1, min(limit, 1000)))
    # the queued jobs come first, in the order they will run: a job's position is its place among them
    return [_view(state, job, position) for position, job in enumerate(jobs)]


@router.get("/jobs/{job_id}")
def get_job(request: Request, job_id: str):
    state = _state(request)
    return _view(state, _job(state, job_id))


@router.delete("/jobs/{job_id}")
def cancel_job(request: Request, job_id: str):
    """Cancel a queued job, or interrupt a running one at its next step (the images finished are kept)."""
    state = _state(request)
    job = _job(state, job_id)
    if job.status == "queued" and state.store.cancel_queued_job(job_id):
        return _view(state, _job(state, job_id))
    live = state.live.get(job_id)
    if live is not None and not live.finished.is_set():
        live.cancel.interrupt()
        return _view(state, _job(state, job_id))
    job = _job(state, job_id)
    if job.finished:
        raise HTTPException(409, f"job {job_id} has already finished ({job.status})")
    raise HTTPException(409, f"job {job_id} is starting; try again")


@router.get("/jobs/{job_id}/events")
async def job_events(request: Request, job_id: str):
    """Server-sent events: every progress event of the job so far, then each as it comes, until it ends."""
    state = _state(request)
    _job(state, job_id)

    async def stream():
        sent, idle = 0, 0
        while True:
            live = state.live.get(job_id)
            if live is not None:
                events = live.events[sent:]
                for event in events:
                    yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
                sent += len(events)
                if live.finished.is_set() and sent >= len(live.events):
                    return
            else:
                idle += 1
                if idle % 10 == 0:  # queued (or finished before this server started): look at the table
                    job = state.store.job(job_id)
                    if job is None or job.finished:
                        status = job.status if job else "gone"
                        yield f"event: status\ndata: {json.dumps({'type': 'status', 'status': status})}\n\n"
                        return
                    yield ": queued\n\n"  # a comment line keeps proxies from closing an idle stream
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.05)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/jobs/{job_id}/images/{index}")
def job_image(request: Request, job_id: str, index: int):
    job = _job(_state(request), job_id)
    images = (job.result or {}).get("images", [])
    if not 0 <= index < len(images) or not images[index].get("path"):
        raise HTTPException(404, f"job {job_id} has no image {index}")
    path = Path(images[index]["path"]).resolve()
    if not path.is_relative_to(paths.outputs_dir().resolve()) or not path.is_file():
        raise HTTPException(404, f"image {index} of job {job_id} is no longer in the output folder")
    return FileResponse(path)


@router.get("/jobs/{job_id}/files/{key}")
def job_file(request: Request, job_id: str, key: str):
    """A file a sweep or a training run made (grid, chart, CSV, samples, the LoRA): by index of the job's
    `result.files` list, or by name where it is a mapping."""
    job = _job(_state(request), job_id)
    files = (job.result or {}).get("files") or []
    path = files.get(key) if isinstance(files, dict) else (files[int(key)] if key.isdigit() and int(key) < len(files) else None)
    if not path:
        raise HTTPException(404, f"job {job_id} has no file {key!r}")
    path = Path(path).resolve()
    if not path.is_relative_to(paths.hayai_home().resolve()) or not path.is_file():
        raise HTTPException(404, f"file {key!r} of job {job_id} is no longer there")
    return FileResponse(path)


@router.get("/datasets")
def datasets():
    """The training datasets a train job may name: the folders of $HAYAI_HOME/datasets."""
    from hayai.server.tasks import datasets_dir

    folder = datasets_dir()
    if not folder.is_dir():
        return []
    return [{"name": entry.name, "path": str(entry)} for entry in sorted(folder.iterdir()) if entry.is_dir()]


@router.get("/datasets/{name}/check")
def check_dataset_route(name: str, resolution: Optional[int] = None, trigger_word: Optional[str] = None):
    """The dataset doctor's findings (as `hayai dataset check`)."""
    from hayai.dataset import check_dataset, scan_dataset
    from hayai.server.tasks import datasets_dir

    folder = datasets_dir() / name
    if "/" in name or "\\" in name or name.startswith(".") or not folder.is_dir():
        raise HTTPException(404, f"no dataset {name!r} in {datasets_dir()}")
    if resolution is not None and not 64 <= resolution <= 4096:
        raise HTTPException(400, f"resolution={resolution} must be between 64 and 4096")
    return check_dataset(scan_dataset(folder), resolution=resolution, trigger_word=trigger_word).to_dict()


@router.post("/plan")
def plan(request: Request, body: HayaiRequest):
    """The plan a request would run with: every strategy's predicted peak memory and time, the choice and why.
    From the model's configs, without loading it."""
    from hayai.generation.kinds import plan_request
    from hayai.memory.facts import facts_for_source
    from hayai.memory.planner import plan_keeping_counts

    state = _state(request)
    fields, images = _fields(body)
    if images:
        raise HTTPException(400, "the plan needs no input image; send width and height instead")
    queued = queued_request(fields)
    check_request(state.catalog, queued)
    source = state.catalog.resolve(queued.model)
    queued = state.engine.with_speed_preset(queued, source)
    facts, label = facts_for_source(source)
    side = facts.native_size
    resolved = queued.resolve(source.family, (side, side), recommended=state.engine.recommended_for(queued, source)[0])
    shape = plan_request(resolved)
    result = plan_keeping_counts(state.store, facts, shape, state.engine.device_spec, allow_lossy=state.engine.allow_lossy)
    return {"model": label, "device": state.engine.device_spec.describe(), "request": dataclasses.asdict(shape),
            **result.to_dict()}


@router.get("/history")
def history(request: Request, search: Optional[str] = None, status: Optional[str] = None, model: Optional[str] = None,
            kind: Optional[str] = None, limit: int = 50):
    from hayai.store.history import RUN_KINDS, RUN_STATUSES

    if status is not None and status not in RUN_STATUSES:
        raise HTTPException(400, f"status={status!r} must be one of: {', '.join(RUN_STATUSES)}")
    if kind is not None and kind not in RUN_KINDS:
        raise HTTPException(400, f"kind={kind!r} must be one of: {', '.join(RUN_KINDS)}")
    runs = _state(request).store.runs(limit=max(1, min(limit, 1000)), status=status, model=model, search=search, kind=kind)
    return [dataclasses.asdict(run) for run in runs]


@router.delete("/history/{run_id}")
def trash_run_route(request: Request, run_id: int):
    """Move a run's images to $HAYAI_HOME/trash (the run stays in the history, pointing at them there)."""
    from hayai.store.trash import trash_run

    state = _state(request)
    try:
        state.store.run(run_id)
    except HayaiError:
        raise HTTPException(404, f"no run {run_id} in the history") from None
    return {"run_id": run_id, "moved": [str(path) for path in trash_run(state.store, run_id)]}


def _job(state, job_id: str):
    job = state.store.job(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


def _view(state, job, position: int | None = None) -> dict[str, Any]:
    """A job as clients see it: its row, its place in the queue, and while it runs, its live progress (with the
    latest live preview, a base64 PNG, as `/sdapi/v1/progress` gives it)."""
    view = job.to_dict()
    if job.status != "queued":
        view["position"] = None
    else:
        view["position"] = position if position is not None else state.store.queue_position(job)
    live = state.live.get(job.id)
    if job.status == "running" and live is not None:
        view["progress"] = {"phase": live.phase, "done": live.done, "total": live.total,
                            "fraction": round(live.fraction, 4), "predicted_seconds": live.predicted_seconds,
                            "preview": live.current_image}
    result = job.result or {}
    for index, image in enumerate(result.get("images", [])):
        image["url"] = f"/hayai/v1/jobs/{job.id}/images/{index}"
    files = result.get("files")
    if files:
        keys = files if isinstance(files, dict) else range(len(files))
        view["file_urls"] = {str(key): f"/hayai/v1/jobs/{job.id}/files/{key}" for key in keys}
    return view
