"""The worker: one thread that takes jobs from the persistent queue, in order, and runs them (`tasks.TASKS`).

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
from hayai.server.live import Live
from hayai.server.tasks import TASKS, Context, Outcome

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
        batches = job.request.get("batch_count", 1) if job.kind == "generate" else 1
        live = self.live.start(job.id, job.api, batches)
        context = Context(self.engine, self.store, self.live, live, self._stopping)
        try:
            outcome = TASKS[job.kind].run(job.request, job.attempts, job.id, job.api, job.options, context)
        except HayaiError as error:
            outcome = Outcome("error", error=str(error))
        except Exception as error:  # a bug: the job fails, the server goes on
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            outcome = Outcome("error", error=f"internal error: {type(error).__name__}: {error}")
        if outcome.requeue:
            self.live.finish(live, "requeued")
            return  # left 'running': the next start runs it again
        if outcome.result is not None and outcome.result.get("run_id") is not None:
            self.store.job_run_id(job.id, outcome.result["run_id"])
        self.store.finish_job(job.id, status=outcome.status, result=outcome.result, error=outcome.error)
        if outcome.status == "error":
            self.live.add_event(live, {"type": "error", "error": outcome.error})
        self.live.finish(live, outcome.status, outcome.images)
