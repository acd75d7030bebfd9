"""What every page shares: submitting a job exactly as `POST /hayai/v1/jobs` does, following it while it
runs (progress with ETA from the live view), and calling a route's function in process.

The UI has no logic of its own: a job is built by the API's `job_spec` from the same `JobSubmission` body a
client would post, and queued by `submit`; the other pages call the route functions of `hayai_api` with
the server's state, so the UI and the API cannot disagree.
"""

from __future__ import annotations

import html
import time
from types import SimpleNamespace

__all__ = ["as_request", "submit_body", "interrupt", "follow", "progress_html", "route_error", "png_b64"]

POLL_S = 0.25


def as_request(state):
    """What a route function reads of its `Request` (`request.app.state.hayai`), for calling it in process."""
    return SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(hayai=state)))


def png_b64(image) -> str:
    from hayai.server.images import encode_png

    return encode_png(image, None)


def submit_body(state, body: dict):
    """Queue the job `body` asks for (a `POST /hayai/v1/jobs` body: one of request, sweep, train); the job."""
    from hayai.server.app import submit
    from hayai.server.hayai_api import JOB_BODIES, JobSubmission, job_spec

    submission = JobSubmission.model_validate(body)
    given = next(name for name in JOB_BODIES if getattr(submission, name) is not None)
    kind, spec = job_spec(state, given, submission)
    job, _ = submit(state, kind, spec, api="ui", options={"save": True, "strategy": submission.strategy},
                    submitted=submission.model_dump(mode="json", exclude_unset=True), priority=submission.priority)
    return job


def interrupt(state, job_id: str | None, *, skip: bool = False, or_current: bool = False) -> None:
    """As `DELETE /hayai/v1/jobs/{id}` (stop the job at its next step) or, with `skip`, A1111's /skip; with
    `or_current` and no job of the page's own, the running job (A1111's Interrupt button)."""
    live = state.live.get(job_id) if job_id else (state.live.current if or_current else None)
    if live is None or live.finished.is_set():
        return
    if skip:
        live.cancel.skip()
    else:
        live.cancel.interrupt()


def route_error(error: Exception) -> str:
    """The message a client of the API would read for this refusal."""
    from fastapi import HTTPException
    from pydantic import ValidationError

    if isinstance(error, HTTPException):
        return str(error.detail)
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
    return str(error)


def follow(state, job_id: str):
    """(job row, live record or None) every POLL_S until the job has finished; the last one is finished."""
    while True:
        live = state.live.get(job_id)
        job = state.store.job(job_id)
        if job.finished:  # (the worker records the end before the live record says it: the row is final)
            yield job, live
            return
        yield job, live
        time.sleep(POLL_S)


def progress_html(state, job, live) -> str:
    if job.status == "queued":
        position = state.store.queue_position(job)
        return _bar(0, f"queued{'' if position is None else f' ({position} job(s) before it)'}")
    if job.finished:
        words = {"done": "done", "interrupted": "interrupted", "error": f"failed: {job.error}", "cancelled": "cancelled"}
        return _bar(1 if job.status == "done" else 0, words.get(job.status, job.status))
    if live is None:
        return _bar(0, "starting")
    eta = live.eta_seconds()
    text = f"{live.phase} {live.done}/{live.total}" if live.total else live.phase
    if live.detail:
        text += f" · {live.detail}"
    if eta is not None:
        text += f" · ETA {eta:.1f} s"
    return _bar(live.fraction, text)


def _bar(fraction: float, text: str) -> str:
    percent = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="hayai-progress" role="progressbar" aria-valuenow="{percent:.0f}" aria-valuemin="0" '
            f'aria-valuemax="100"><div class="hayai-progress-fill" style="width:{percent:.1f}%"></div>'
            f'<span class="hayai-progress-text">{html.escape(text)}</span></div>')


CSS = """
.hayai-progress { position: relative; height: 1.8em; border-radius: 6px; background: var(--neutral-200, #e5e7eb);
  overflow: hidden; }
.hayai-progress-fill { position: absolute; inset: 0 auto 0 0; background: var(--color-accent, #f97316); opacity: .55; }
.hayai-progress-text { position: relative; padding: 0 .6em; line-height: 1.8em; font-variant-numeric: tabular-nums; }
.hayai-warn { color: #b45309; }
footer { display: none !important; }
"""
