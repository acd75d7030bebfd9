"""What the server knows only while it runs: the running job's progress, its event stream, its cancel
token, and the images a waiting A1111 client is about to receive. Everything that must survive a restart
is in the job table (`hayai.store.jobs`); this is the live view of it.

A1111's `/sdapi/v1/progress` is computed here from the step callback, so it moves at every denoising
step (Forge #1814: a progress stuck at 0.01 is one whose step counter is never updated).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from hayai.generation.options import CancelToken
from hayai.generation.results import ProgressEvent

__all__ = ["LiveJob", "Live"]

KEEP_FINISHED = 64  # finished jobs whose event streams stay readable in memory


@dataclass
class LiveJob:
    id: str
    api: str
    batch_count: int
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    cancel: CancelToken = field(default_factory=CancelToken)
    phase: str = "queued"
    detail: str = ""
    done: int = 0  # denoising steps done, of the whole job
    total: int = 0
    predicted_seconds: float | None = None  # the plan's estimate of the whole job
    events: list[dict] = field(default_factory=list)  # the event stream (SSE), in order
    finished: threading.Event = field(default_factory=threading.Event)
    status: str = "running"
    images: list = field(default_factory=list)  # (PIL image, infotext), for a waiting A1111 client

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def eta_seconds(self, progress: float | None = None) -> float | None:
        """Seconds left as A1111 computes them, elapsed / progress - elapsed (`progress`: the fraction done
        unless given), once a step is done; before, the plan's predicted time less the time spent (None
        without a plan)."""
        elapsed = time.monotonic() - self.started
        if self.done and self.total:
            return max(0.0, elapsed / (progress or self.fraction) - elapsed)
        if self.predicted_seconds is not None:
            return max(0.0, self.predicted_seconds - elapsed)
        return None


class Live:
    """The live jobs, by id. Written by the worker thread, read by request handlers: one lock guards it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, LiveJob] = OrderedDict()
        self.current: LiveJob | None = None

    def start(self, job_id: str, api: str, batch_count: int) -> LiveJob:
        live = LiveJob(job_id, api, batch_count)
        with self._lock:
            self._jobs[job_id] = live
            self.current = live
        self.add_event(live, {"type": "status", "status": "running"})
        return live

    def get(self, job_id: str) -> LiveJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def add_event(self, live: LiveJob, event: dict) -> None:
        with self._lock:
            live.events.append({**event, "time": round(time.monotonic() - live.started, 3)})

    def on_progress(self, live: LiveJob, event: ProgressEvent) -> None:
        """The engine's progress callback for this job."""
        with self._lock:
            live.phase, live.detail = event.phase, event.detail
            if event.phase == "denoise":
                live.done, live.total = event.done, event.total
            if event.phase == "plan" and event.seconds is not None:
                live.predicted_seconds = event.seconds
        payload = {"type": event.phase, "done": event.done, "total": event.total}
        if event.detail:
            payload["detail"] = event.detail
        if event.seconds is not None:
            payload["predicted_seconds"] = round(event.seconds, 3)
        self.add_event(live, payload)

    def set_progress(self, live: LiveJob, done: int, total: int, phase: str) -> None:
        """Progress of a job that is not a run of denoising steps (a sweep's cells, a training run's steps),
        for /progress and the job's view; its own events tell the details."""
        with self._lock:
            live.done, live.total, live.phase = done, total, phase

    def finish(self, live: LiveJob, status: str, images: list | None = None) -> None:
        with self._lock:
            live.status = status
            live.images = images or []
            if self.current is live:
                self.current = None
            spare = [key for key, job in self._jobs.items()  # oldest first; never one whose client has not taken its images
                     if job.finished.is_set() and not job.images and job is not live]
            for key in spare[:max(0, len(self._jobs) - KEEP_FINISHED)]:
                del self._jobs[key]
        self.add_event(live, {"type": "status", "status": status})
        live.finished.set()

    # -- A1111's view ----------------------------------------------------------------------------
    def a1111_progress(self) -> dict:
        """`/sdapi/v1/progress` as A1111 computes it: exactly 0 with job_count 0 when idle (clients wait for
        that), else 0.01 + the fraction done, and eta_relative = elapsed / progress - elapsed (before the
        first step hayai uses the plan's predicted time instead of A1111's guess)."""
        with self._lock:
            live = self.current
            if live is None:
                return {"progress": 0.0, "eta_relative": 0.0, "state": _state(None), "current_image": None,
                        "textinfo": None, "current_task": None}
            progress = min(1.0, 0.01 + live.fraction) if live.done else 0.01
            eta = live.eta_seconds(progress) or 0.0
            return {"progress": progress, "eta_relative": eta, "state": _state(live), "current_image": None,
                    "textinfo": f"{live.phase} {live.detail}".strip(), "current_task": live.id}


def _state(live: LiveJob | None) -> dict:
    """A1111's `shared.state.dict()`: the job is one batch (A1111's n_iter loop), its steps are the batch's."""
    if live is None:
        return {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
                "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    per_batch = max(1, live.total // max(1, live.batch_count)) if live.total else 0
    job_no = min(live.done // per_batch, live.batch_count - 1) if per_batch else 0
    return {
        "skipped": live.cancel.skip_pending, "interrupted": live.cancel.interrupted, "stopping_generation": False,
        "job": live.id, "job_count": live.batch_count,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(live.started_wall)),
        "job_no": job_no, "sampling_step": live.done - job_no * per_batch if per_batch else 0,
        "sampling_steps": per_batch,
    }
