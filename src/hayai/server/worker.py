"""The worker: one thread that takes jobs from the persistent queue, in order, and runs them on the engine.

One at a time, because one device runs one pipeline call at a time; the engine's resident models stay
loaded between jobs. A job's outcome is written to the job table before the next job starts, so a
`kill -9` at any moment leaves each job either finished (its result readable) or not (run again, from
the start, with the seeds it was given when submitted).
"""

from __future__ import annotations

import logging
import threading
import traceback

from hayai.errors import HayaiError
from hayai.generation.options import RunOptions
from hayai.generation.request import GenerationRequest
from hayai.server.live import Live, LiveJob

__all__ = ["Worker"]

log = logging.getLogger("hayai.server")


class Worker(threading.Thread):
    def __init__(self, store, engine, live: Live) -> None:
        super().__init__(name="hayai-worker", daemon=True)
        self.store, self.engine, self.live = store, engine, live
        self._wake = threading.Event()
        self._stopping = threading.Event()

    def wake(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Stop after interrupting the running job, which stays 'running' in the table: the next start of
        the server queues it again (a shutdown is not the user's interrupt)."""
        self._stopping.set()
        current = self.live.current
        if current is not None:
            current.cancel.interrupt()
        self._wake.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            job = self.store.claim_job()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job) -> None:
        request = GenerationRequest.from_dict(job.request)
        live = self.live.start(job.id, job.api, request.batch_count)
        options = RunOptions(strategy=job.options.get("strategy"), save=bool(job.options.get("save", True)),
                             cancel=live.cancel, progress=lambda event: self.live.on_progress(live, event))
        try:
            result = self.engine.generate(request, options)
        except HayaiError as error:
            self._end(job.id, live, "error", None, str(error))
            return
        except Exception as error:  # a bug: the job fails, the server goes on
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            self._end(job.id, live, "error", None, f"internal error: {type(error).__name__}: {error}")
            return
        if self._stopping.is_set() and result.interrupted:
            self.live.finish(live, "requeued")
            return  # left 'running': the next start runs it again
        payload = result.to_dict()
        for entry, image in zip(payload["images"], result.images):
            entry["infotext"] = image.infotext
        if result.run_id is not None:
            self.store.job_run_id(job.id, result.run_id)
        status = "interrupted" if result.interrupted else "done"
        waiting = job.api == "a1111"  # an A1111 client takes the pixels from memory; a hayai job's are files
        self._end(job.id, live, status, payload, "interrupted" if result.interrupted else None,
                  [(image.image, image.infotext) for image in result.images] if waiting else None)

    def _end(self, job_id: str, live: LiveJob, status: str, payload: dict | None, error: str | None,
             images: list | None = None) -> None:
        self.store.finish_job(job_id, status=status, result=payload, error=error)
        if error and status == "error":
            self.live.add_event(live, {"type": "error", "error": error})
        self.live.finish(live, status, images)
