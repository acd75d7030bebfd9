"""How to run a request, per call: what a request says to make is in `GenerationRequest`; how is here.

An `Engine` is shared (by a server's workers, a sweep, a Ray actor) and nothing a caller passes here
changes it: the strategy, the lossy permission, whether to save, which images of the run to keep and the
number their file names start at, a `CancelToken` the run checks at every denoising step, and the execution
levers (channels-last, compile, OpenVINO).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from hayai.errors import Interruption
from hayai.generation.results import ProgressCallback

__all__ = ["RunOptions", "CancelToken", "Cancelled"]


class Cancelled(Interruption):
    """Raised inside a run at the step where its token was interrupted or told to skip."""

    def __init__(self, how: str):
        super().__init__(f"run {how}")
        self.how = how  # "interrupt" or "skip"


class CancelToken:
    """Stops a run from another thread (a server's /interrupt and /skip), at the next denoising step.

    `interrupt()` ends the whole run: the images saved so far are kept and the result says it was
    interrupted. `skip()` drops the batch being denoised and goes on with the next one, as A1111's Skip.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._interrupted = False
        self._skip = False

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True

    def skip(self) -> None:
        with self._lock:
            self._skip = True

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    @property
    def skip_pending(self) -> bool:
        """A skip asked for and not yet taken by the batch it stops (A1111's `state.skipped`)."""
        return self._skip

    def check(self) -> None:
        """Raise `Cancelled` if the run should stop here (a skip is consumed by the batch it stops)."""
        with self._lock:
            if self._interrupted:
                raise Cancelled("interrupt")
            if self._skip:
                self._skip = False
                raise Cancelled("skip")


@dataclass(frozen=True)
class RunOptions:
    strategy: str | None = None  # force this strategy (a name from `hayai plan`) instead of the planner's choice
    allow_lossy: bool | None = None  # fp8 storage: True admits it on speed, False never, None only when nothing lossless is fast
    save: bool = True  # write the images (and their records) to the output folder
    keep: frozenset[int] | None = None  # positions of the run to keep (re-making one image of a batch); None: all
    first_index: int | None = None  # {index} of the first saved image's file name; None: the folder's next (A1111's)
    cancel: CancelToken | None = None
    progress: ProgressCallback | None = None
    # execution levers (hayai.speed.execution): None = those measurements made here show pay for this model
    # and size; a set = exactly these (the bench's levers, and its exact run with none)
    execution: frozenset[str] | None = None
