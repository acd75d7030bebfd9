"""The FastAPI app: A1111's routes and hayai's own over one persistent queue, behind the local-server guard.

`create_app(config)` builds it; `hayai serve` runs it on uvicorn. Errors are A1111's JSON shape
(`{"error", "detail", "body", "errors"}`): 400 for a request hayai refuses (unknown sampler, a model not in
the catalog), 422 for an input image that is not valid base64 or not an image, 404 for an unknown job.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hayai import __version__
from hayai.errors import HayaiError
from hayai.server.requests import ImageInputError
from hayai.store.jobs import IdempotencyConflict
from hayai.server.security import LOOPBACK_NAMES, Guard
from hayai.server.state import ServerConfig, ServerState

__all__ = ["create_app", "submit", "wait_for"]

log = logging.getLogger("hayai.server")


def create_app(config: ServerConfig, state: ServerState | None = None):
    """The ASGI app for `config` (the guard wraps FastAPI, so refused requests never reach a route)."""
    from hayai.server import a1111, hayai_api

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        requeued = app.state.hayai.start()
        if requeued:
            log.warning("put back in the queue %d job(s) a stopped server left running: %s", len(requeued), ", ".join(requeued))
        yield
        await asyncio.get_running_loop().run_in_executor(None, app.state.hayai.stop)

    app = FastAPI(title="hayai", version=__version__, lifespan=lifespan,
                  description="hayai's server: AUTOMATIC1111's API (/sdapi/v1) and hayai's own (/hayai/v1) over one "
                              "persistent job queue.")
    app.state.hayai = state if state is not None else ServerState(config)
    app.include_router(a1111.router)
    app.include_router(hayai_api.router)
    _errors(app)
    if config.ui:
        from hayai.server.ui import mount_ui

        mount_ui(app, app.state.hayai)  # at /, after the API routes; the Guard below covers it too
    hosts = None if not config.loopback else (*LOOPBACK_NAMES, config.host, *config.allow_hosts)
    return Guard(app, allowed_hosts=hosts, cors_allow=config.cors_allow, auth=list(config.auth),
                 max_body_bytes=config.max_body_bytes)


# what each refusal answers, most specific first: an image that is not an image, a reused idempotency key -> 422;
# anything else hayai refuses (unknown sampler, a model not in the catalog, a path) -> 400
_STATUS = ((ImageInputError, 422), (IdempotencyConflict, 422), (HayaiError, 400))


def _errors(app: FastAPI) -> None:
    def shape(error: Exception, detail: str, status: int, headers=None) -> JSONResponse:
        return JSONResponse({"error": type(error).__name__, "detail": detail, "body": None, "errors": detail},
                            status_code=status, headers=headers)

    async def refused(request: Request, error: HayaiError) -> JSONResponse:
        return shape(error, str(error), next(code for kind, code in _STATUS if isinstance(error, kind)))

    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:  # 404s, 409s: A1111's shape too
        return shape(error, str(error.detail), error.status_code, getattr(error, "headers", None))

    app.add_exception_handler(HayaiError, refused)
    app.add_exception_handler(StarletteHTTPException, http_error)


def submit(state: ServerState, kind: str, spec: dict, *, api: str, options: dict, submitted, priority: int = 0,
           idempotency_key: str | None = None):
    """Queue a checked job spec (`tasks`); (job, created). `submitted` is what the client sent, which a retry
    with the same idempotency key must repeat. The worker is woken at once."""
    job, created = state.store.submit_job(kind=kind, api=api, request=spec, options=options, priority=priority,
                                          idempotency_key=idempotency_key, submitted=submitted)
    if created and state.worker is not None:
        state.worker.wake()
    return job, created


async def wait_for(state: ServerState, job_id: str):
    """Wait, without holding a thread, until the job has finished; the job's row, and its live record."""
    polls = 0
    while True:
        live = state.live.get(job_id)
        if live is not None and live.finished.is_set():
            return state.store.job(job_id), live
        polls += 1
        if polls % 20 == 0:
            job = state.store.job(job_id)
            if job is not None and job.finished:
                return job, state.live.get(job_id)
        await asyncio.sleep(0.02 if polls < 100 else 0.1)
