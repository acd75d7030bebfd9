"""What the server knows only while it runs: the running job's progress, its event stream, its cancel
token, and the images a waiting A1111 client is about to receive. Everything that must survive a restart
is in the job table (`hayai.store.jobs`); this is the live view of it.

A1111's `/sdapi/v1/progress` is computed here from the step callback, so it moves at every denoising
step (Forge #1814: a progress stuck at 0.01 is one whose step counter is never updated). Its
`current_image`, the live preview, is pictured from the step's latents every `show_progress_every_n_steps`
steps (`Previews`, from A1111's options; `hayai.generation.preview`), as a base64 PNG.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from hayai.generation.options import CancelToken
from hayai.generation.results import ProgressEvent
from hayai.server.images import encode_png

__all__ = ["LiveJob", "Live", "Previews", "PREVIEW_TYPES"]

KEEP_FINISHED = 64  # finished jobs whose event streams stay readable in memory
# A1111's `show_progress_type` -> hayai's preview method. hayai has no "Approx NN" network: it is the fitted
# linear map. "TAESD" is the request's tiny autoencoder, else one in $HAYAI_HOME/models/VAE-approx/ (hayai
# downloads none), else the linear map.
PREVIEW_TYPES = {"Full": "full", "Approx NN": "cheap", "Approx cheap": "cheap", "TAESD": "auto"}


@dataclass(frozen=True)
class Previews:
    """When and how `/progress` pictures the image in progress: A1111's `live_previews_enable`,
    `show_progress_every_n_steps` (steps between previews; -1: at the end of each batch; 0: none) and
    `show_progress_type`."""

    enabled: bool = True
    every: int = 10
    method: str = "cheap"

    @classmethod
    def from_options(cls, options: dict) -> Previews:
        return cls(bool(options["live_previews_enable"]), int(options["show_progress_every_n_steps"]),
                   PREVIEW_TYPES[options["show_progress_type"]])

    def due(self, done: int, total: int, batch_count: int) -> bool:
        """Whether step `done` of `total` (over `batch_count` batches) gets a preview."""
        if not self.enabled or self.every == 0:
            return False
        if self.every < 0:
            return total > 0 and done % max(1, total // max(1, batch_count)) == 0
        return done % self.every == 0


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
    current_image: str | None = None  # the latest live preview, a base64 PNG
    previews_off: bool = False  # a preview failed: none for the rest of the job

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
        self.previews = Previews()  # the server sets it from A1111's options

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
        if event.phase == "denoise" and event.preview is not None and not live.previews_off:
            self._preview(live, event)
        payload = {"type": event.phase, "done": event.done, "total": event.total}
        if event.detail:
            payload["detail"] = event.detail
        if event.seconds is not None:
            payload["predicted_seconds"] = round(event.seconds, 3)
        self.add_event(live, payload)

    def _preview(self, live: LiveJob, event: ProgressEvent) -> None:
        """Picture the step for `/progress` when it is due. A preview must never cost the job: one that fails
        (a full decode out of memory, say) is an event, and the job runs on without previews."""
        previews = self.previews
        if not previews.due(event.done, event.total, live.batch_count):
            return
        try:
            image = event.preview.image(previews.method)
        except Exception as error:  # noqa: BLE001 (whatever it is, the run goes on)
            live.previews_off = True
            self.add_event(live, {"type": "preview", "error": f"{type(error).__name__}: {error}",
                                  "detail": "live previews are off for the rest of this job"})
            return
        encoded = encode_png(image, None)
        with self._lock:
            live.current_image = encoded

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
    def a1111_progress(self, skip_current_image: bool = False) -> dict:
        """`/sdapi/v1/progress` as A1111 computes it: exactly 0 with job_count 0 when idle (clients wait for
        that), else 0.01 + the fraction done, and eta_relative = elapsed / progress - elapsed (before the
        first step hayai uses the plan's predicted time instead of A1111's guess); `current_image` the
        latest live preview, unless skipped."""
        with self._lock:
            live = self.current
            if live is None:
                return {"progress": 0.0, "eta_relative": 0.0, "state": _state(None), "current_image": None,
                        "textinfo": None, "current_task": None}
            progress = min(1.0, 0.01 + live.fraction) if live.done else 0.01
            eta = live.eta_seconds(progress) or 0.0
            image = None if skip_current_image else live.current_image
            return {"progress": progress, "eta_relative": eta, "state": _state(live), "current_image": image,
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
