"""One way to log a run: its start, each image as it is saved, and its end, whatever ends it.

    with recorded_run(store, "generate", request=..., model=..., model_hash=..., device=...) as run:
        ...
        run.image(path, seed)          # in the history at once: a kill after this loses nothing
        run.timings, run.events = ...  # what the end records
        run.status = "interrupted"     # a run that stopped early on purpose (default at a clean exit: "ok")

An exception marks the run 'error' (KeyboardInterrupt: 'interrupted') and goes on. If recording the end
fails too (a full disk), the original error is the one raised; the row stays 'running' until the history
sees that its process has ended and marks it interrupted.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import Interruption

__all__ = ["RecordedRun", "recorded_run"]


@dataclass
class RecordedRun:
    store: Any
    run_id: int
    status: str | None = None  # None at the end of the block: "ok"
    seeds: list[int] = field(default_factory=list)  # every seed of the run (planned), recorded at the end
    outputs: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    events: list[dict] = field(default_factory=list)
    error: str | None = None

    def image(self, path, seed: int) -> None:
        self.outputs.append(str(path))
        self.store.add_output(self.run_id, str(path), seed)


@contextmanager
def recorded_run(store, kind: str, *, request: dict, model: str, model_hash: str | None, device: str):
    run = RecordedRun(store, store.start_run(kind, request=request, model=model, model_hash=model_hash, device=device))
    try:
        yield run
    except KeyboardInterrupt:
        run.status, run.error = "interrupted", run.error or "interrupted by the user"
        raise
    except Interruption:  # a cancellation token stopped it (hayai.generation.options.Cancelled)
        run.status, run.error = "interrupted", run.error or "interrupted"
        raise
    except BaseException as exc:
        run.status, run.error = "error", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        failing = sys.exc_info()[0] is not None
        try:
            store.finish_run(run.run_id, status=run.status or "ok", seeds=run.seeds, timings=run.timings,
                             peak_memory_bytes=run.peak_memory_bytes, outputs=run.outputs, error=run.error,
                             events=run.events)
        except Exception:
            if not failing:
                raise
