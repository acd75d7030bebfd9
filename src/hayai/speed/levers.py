"""The one place a pipeline call gets the speed levers its request asks for.

`applied(pipe, request)` installs the levers on the pipeline's denoiser for one call and removes them
after it; with every knob off it installs nothing, so the call is the plain diffusers call.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

__all__ = ["active_levers", "applied"]


def active_levers(request) -> dict[str, float]:
    """The levers of a resolved request that change its run (knob -> value)."""
    active = {}
    if request.step_cache and request.step_cache > 1:
        active["step_cache"] = request.step_cache
    if request.token_merging:
        active["token_merging"] = request.token_merging
    if request.block_cache:
        active["block_cache"] = request.block_cache
    return active


@contextmanager
def applied(pipe, request):
    """The levers on `pipe` for the duration of the block; yields the installed levers by knob name."""
    levers = active_levers(request)
    installed = {}
    with ExitStack() as stack:
        if "token_merging" in levers:
            from hayai.speed.token_merging import TokenMerging

            unet = _denoiser(pipe, "unet", "token_merging")
            installed["token_merging"] = stack.enter_context(TokenMerging(unet, levers["token_merging"]))
        if "step_cache" in levers:
            from hayai.speed.step_cache import StepCache

            unet = _denoiser(pipe, "unet", "step_cache")
            installed["step_cache"] = stack.enter_context(StepCache(unet, levers["step_cache"]))
        if "block_cache" in levers:
            from hayai.speed.block_cache import BlockCache

            transformer = _denoiser(pipe, "transformer", "block_cache")
            installed["block_cache"] = stack.enter_context(BlockCache(transformer, levers["block_cache"]))
        yield installed


def _denoiser(pipe, attribute: str, lever: str):
    """The pipeline's `unet` or `transformer` that `lever` works on (a resolved request asks for no other)."""
    denoiser = getattr(pipe, attribute, None)
    if denoiser is None:
        what = {"unet": "a UNet", "transformer": "a transformer"}[attribute]
        raise ValueError(f"{lever} needs {what}; {type(pipe).__name__} has none")
    return denoiser
