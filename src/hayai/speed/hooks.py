"""What the step caches share on diffusers' hook registry: a hook that holds its lever's state, and the
hook on the denoiser that starts each model evaluation.

An evaluation is one denoiser call of the pipeline (the CFG halves together); under the batch-split
strategy it is made of several sub-calls, one per sample, which each cache tells apart by a slot number
that its own sub-call hook advances. A lever's state says what a new evaluation resets
(`begin_evaluation`). The classes are built on first use, so importing this module imports no diffusers.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["evaluation_hooks"]


@lru_cache(maxsize=None)
def evaluation_hooks():
    """(StateHook, Evaluation): the base of a lever's hooks (`self.state`), and the hook to register on the
    denoiser, which calls `state.begin_evaluation()` before each of its calls."""
    from diffusers.hooks import ModelHook

    class StateHook(ModelHook):
        def __init__(self, state):
            super().__init__()
            self.state = state

    class Evaluation(StateHook):
        """On the denoiser: a new model evaluation begins."""

        def pre_forward(self, module, *args, **kwargs):
            self.state.begin_evaluation()
            return args, kwargs

    return StateHook, Evaluation
