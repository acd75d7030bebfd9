"""Regional `torch.compile` as an execution lever (`compile`): the denoiser's repeated blocks compiled once.

diffusers' `compile_repeated_blocks` compiles every sub-module whose class its model names in
`_repeated_blocks` (UNet2DConditionModel: BasicTransformerBlock; Flux's transformer: its two block kinds;
SD3's transformer names none, so SD3 cannot take this lever). Regional rather than whole-model: the blocks of
one class share their code, so dynamo traces each shape once and reuses it for every block, which is most of
the speed of a full compile for a fraction of its compile time.

Three things make it unlike the other execution levers:
- its cost comes at the first call, not when it is put on (`compile_blocks` only wraps the blocks): the bench
  times that first call in an untimed warm-up and keeps the difference to a timed run as the measurement's
  `one_off_seconds` (`hayai.speed.bench`);
- torch cannot undo it (there is no public uncompile), so a compiled pipeline that must run plain is
  dropped and loaded again (`Engine._prepare`); `is_compiled` tells from the mark `compile_blocks` leaves;
- it pays only where the time it saves on a request exceeds the compilation still owed (`decide`, with
  `hayai.speed.execution.pays_back`, the rule OpenVINO's conversion goes by): nothing is owed once the
  loaded pipeline is compiled. A new latent size or batch recompiles once more (dynamo then marks the
  changed dimensions dynamic); that smaller cost is not counted.

LoRAs keep working: they are patched into the weights in place (`param.copy_`), and the compiled blocks
read the same parameters (dynamo takes a module's parameters as graph inputs), so a LoRA applied after
compiling changes the image as it does without compile.
"""

from __future__ import annotations

import importlib
import os

from hayai.errors import RequestError
from hayai.speed.execution import falls_short, pays_back, step_seconds, usable

__all__ = ["BACKEND_VARIABLE", "backend", "check", "compile_blocks", "decide", "is_compiled", "repeated_blocks"]

# Tests only: "eager" makes dynamo trace the blocks without building C++ kernels (seconds, not a minute, on a
# CPU); hayai itself always compiles with inductor, the backend that makes compiled code faster.
BACKEND_VARIABLE = "HAYAI_COMPILE_BACKEND"
_MARK = "_hayai_compiled"  # on the denoiser: the backend its blocks were compiled with
_MEASURE = "`hayai bench speed --levers compile`"


def backend() -> str:
    """The torch.compile backend: inductor, unless $HAYAI_COMPILE_BACKEND names another (for tests)."""
    return os.environ.get(BACKEND_VARIABLE) or "inductor"


def repeated_blocks(denoiser_class: str) -> tuple[str, ...]:
    """The block classes diffusers compiles regionally in a denoiser of this class (none: not compilable)."""
    cls = getattr(importlib.import_module("diffusers"), denoiser_class, None)
    return tuple(getattr(cls, "_repeated_blocks", None) or ())


def check(denoiser_class: str) -> None:
    """A RequestError when a denoiser of this class has no repeated blocks to compile."""
    if not repeated_blocks(denoiser_class):
        raise RequestError(f"execution lever 'compile' compiles a denoiser's repeated blocks, and {denoiser_class} "
                           "names none (diffusers' `_repeated_blocks`); run without it")


def is_compiled(denoiser) -> bool:
    return getattr(denoiser, _MARK, None) is not None


def compile_blocks(denoiser) -> dict | None:
    """Compile `denoiser`'s repeated blocks (fullgraph: a graph break would fail here rather than run slow);
    the compilation itself happens at the first call. Returns what it did (an engine event), or None when
    they were compiled already."""
    if is_compiled(denoiser):
        return None
    check(type(denoiser).__name__)
    chosen = backend()
    denoiser.compile_repeated_blocks(fullgraph=True, backend=chosen)
    setattr(denoiser, _MARK, chosen)
    return {"event": "compile", "backend": chosen, "blocks": list(repeated_blocks(type(denoiser).__name__))}


def decide(measured, *, denoiser_class: str, width: int, height: int, steps: int, images: int, compiled: bool,
           strategy=None, threads: int = 0) -> tuple[bool, str]:
    """Whether `compile` runs this request, and why: `measured` is `store.speed_measurements.nearest` for the
    model on this device; `compiled` whether the loaded pipeline is compiled already (nothing owed); `threads`
    the run's CPU threads (0: it runs on an accelerator)."""
    if not repeated_blocks(denoiser_class):
        return False, f"{denoiser_class} names no repeated blocks to compile"
    if strategy is not None and not usable(frozenset({"compile"}), strategy):
        return False, f"{strategy.name} streams or casts the weights it would compile"
    by_lever = {m.lever: m for m in measured}
    exact, lever = by_lever.get("exact"), by_lever.get("compile")
    if exact is None or lever is None:
        return False, f"not measured here at this size ({_MEASURE} measures it)"
    short = falls_short(lever)
    if short:
        return False, short
    owed = 0.0 if compiled else lever.one_off_seconds
    if owed is None:
        return False, f"its compilation was never timed here ({_MEASURE} times it)"
    return pays_back(steps=steps, images=images, step_seconds=step_seconds(exact, width, height, threads),
                     ratio=lever.denoise_ratio, owed_seconds=owed, cost="compilation", paid="already compiled")
