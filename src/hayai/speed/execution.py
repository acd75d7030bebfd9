"""Execution levers: how a run computes, not what it draws (the same image up to float rounding).

- `channels_last`: the denoiser's weights in channels-last memory format (NHWC convolutions), which some
  kernels run faster (cuDNN on tensor cores; on our CPUs it measured 0.99x, reference §11).
- `compile`: the denoiser's repeated blocks compiled by `torch.compile` (regional: diffusers'
  `compile_repeated_blocks`; `hayai.speed.regional_compile`). UNet2DConditionModel and Flux's transformer
  name blocks to compile; SD3's transformer does not.
- `openvino`: the UNet converted to OpenVINO and run by its CPU plugin (`hayai.speed.openvino`, the
  `[openvino]` extra).

They are not request fields: a request says what to make, and these change only how fast. Nor are they
on by default: `choose` turns one on for a model only where a measurement made here (`hayai bench speed
--levers channels_last`, at the size nearest the run's) shows that it pays end to end (`PAYS_BELOW`) and
that its pixels stay within `MIN_PSNR_DB` of the exact run's; `memory.apply.apply_execution` applies them.
`compile` and `openvino` have a one-off cost (the compilation at the first call, the conversion), so they
are on only where, besides, the time they save on the request pays back what is still owed (`pays_back`:
steps x images x seconds per step x (1 - ratio) > the one-off seconds); `regional_compile.decide` and
`openvino.decide` judge that, and `choose` takes their verdicts.
"""

from __future__ import annotations

from hayai.errors import RequestError

__all__ = ["EXECUTION_LEVERS", "PAYS_BELOW", "MIN_PSNR_DB", "check", "choose", "falls_short", "pays_back",
           "step_seconds", "usable"]

EXECUTION_LEVERS = {"channels_last": "the denoiser's weights in channels-last memory format",
                    "compile": "the denoiser's repeated blocks compiled by torch.compile (regional)",
                    "openvino": "the UNet converted to OpenVINO, run by its CPU plugin (the [openvino] extra)"}
_JUDGED = ("compile", "openvino")  # levers whose pay-back depends on the request: `choose` takes a verdict
PAYS_BELOW = 0.95  # end-to-end time as a ratio to the exact run: below this, a lever pays
MIN_PSNR_DB = 40.0  # and its images must stay this close to the exact run's (mean PSNR; identical is inf)
# placements whose denoiser weights are whole tensors that stay put (offload streams copies of them)
_WHOLE_WEIGHTS = ("resident", "cpu", "te_cpu", "te_offload", "model_offload")


def check(names) -> frozenset[str]:
    """`names` as a set, each an execution lever, or a RequestError naming the one that is not."""
    for name in names:
        if name not in EXECUTION_LEVERS:
            raise RequestError(f"execution lever {name!r} is unknown; known: {', '.join(EXECUTION_LEVERS)}")
        if name == "openvino":
            from hayai.speed.openvino import INSTALL, available

            if not available():
                raise RequestError(f"execution lever 'openvino' needs the [openvino] extra: {INSTALL}")
    return frozenset(names)


def usable(names: frozenset[str], strategy) -> frozenset[str]:
    """The levers of `names` that apply under `strategy` (channels-last and compile need weights that stay
    put, not streamed or cast by hooks; OpenVINO replaces the whole-batch float32 CPU run)."""
    kept = set(names)
    if strategy.placement not in _WHOLE_WEIGHTS or strategy.fp8_storage:
        kept -= {"channels_last", "compile"}
    if strategy.placement != "cpu" or strategy.dtype != "float32" or strategy.split_batch:
        kept.discard("openvino")
    return frozenset(kept)


def falls_short(m) -> str | None:
    """Why measurement `m` does not show its lever pays (too slow end to end, pixels not compared or too far
    from the exact run's), or None when it does."""
    if m.end_to_end_ratio >= PAYS_BELOW:
        return f"{m.end_to_end_ratio:.2f}x end to end (it pays below {PAYS_BELOW:g}x)"
    if m.psnr_db is None:
        return "its pixels were not compared (measured with --no-quality)"
    if m.psnr_db < MIN_PSNR_DB:
        return f"its images differ ({m.psnr_db:.1f} dB PSNR to the exact run's; {MIN_PSNR_DB:g} needed)"
    return None


def step_seconds(exact, width: int, height: int, threads: int = 0) -> float:
    """Seconds per denoising step of the plain run at `width` x `height` on `threads` CPU threads (0: not a
    CPU run): the exact run's measurement scaled by pixel count, and by thread count, from how it was measured
    (the planner's CPU model: a thread's speed is a core's)."""
    seconds = exact.denoise_seconds / exact.steps * (width * height) / (exact.width * exact.height)
    return seconds * exact.threads / threads if threads and exact.threads else seconds


def pays_back(*, steps: int, images: int, step_seconds: float, ratio: float, owed_seconds: float,
              cost: str, paid: str) -> tuple[bool, str]:
    """Whether the time a lever saves on a run, steps x images x seconds per step x (1 - ratio), exceeds the
    one-off cost still owed for it (`cost`: "conversion", "compilation"; `paid`: the words for none owed);
    and why, in numbers."""
    saved = steps * images * step_seconds * (1 - ratio)
    numbers = (f"{ratio:.2f}x per step saves {saved:.1f} s on {steps} steps x {images} image(s), "
               + (f"{cost} {owed_seconds:.1f} s" if owed_seconds else paid))
    if saved > owed_seconds:
        return True, numbers
    return False, f"{numbers} (it pays from {_images_to_pay(steps, step_seconds, ratio, owed_seconds)})"


def _images_to_pay(steps: int, step_seconds: float, ratio: float, owed_seconds: float) -> str:
    per_image = steps * step_seconds * (1 - ratio)
    if per_image <= 0:
        return "no number of images"
    return f"{int(owed_seconds // per_image) + 1} images"


def choose(measured, strategy=None, *, compile: tuple[bool, str] | None = None,
           openvino: tuple[bool, str] | None = None) -> tuple[frozenset[str], list[str]]:
    """The execution levers that pay by `measured` (`hayai.store.speed_measurements.nearest`: one size and step
    count of one model on this device) and apply under `strategy` (when given), and why each is on or off.
    The pay-back of `compile` and `openvino` depends on the request (`regional_compile.decide`,
    `openvino.decide`): these are their verdicts (None: not judged, left out). OpenVINO runs the UNet in
    place of the torch one, so with it on there is nothing for `compile` to speed up."""
    by_lever = {m.lever: m for m in measured}
    verdicts = {"compile": compile, "openvino": openvino}
    if openvino is not None and openvino[0] and compile is not None and compile[0]:
        verdicts["compile"] = (False, "openvino runs the UNet instead")
    chosen, reasons = set(), []
    for name in EXECUTION_LEVERS:
        m = by_lever.get(name)
        if name in _JUDGED:
            if verdicts[name] is not None:
                on, why = verdicts[name]
                chosen.update({name} if on else set())
                reasons.append(f"{name}: {'on' if on else 'off'}, {why}")
            continue
        if strategy is not None and not usable(frozenset([name]), strategy):
            reasons.append(f"{name}: off, {strategy.name} streams or casts the weights it would convert")
        elif m is None:
            reasons.append(f"{name}: off, not measured here at this size (`hayai bench speed --levers {name}`"
                           " measures it)")
        elif short := falls_short(m):
            reasons.append(f"{name}: off, {short}")
        else:
            chosen.add(name)
            closeness = "identical" if m.psnr_db == float("inf") else f"{m.psnr_db:.1f} dB PSNR"
            reasons.append(f"{name}: on, {m.end_to_end_ratio:.2f}x end to end, images {closeness} to the exact run's")
    return frozenset(chosen), reasons


# torch.compile, as built (`hayai.speed.regional_compile`, the `compile` lever): `compile_repeated_blocks(
# fullgraph=True)` on the denoisers whose diffusers class names `_repeated_blocks` (UNet2DConditionModel, Flux's
# transformer; a forced `compile` on SD3 is a RequestError). The engine drops and reloads a compiled pipeline that
# must run plain (torch has no public uncompile), so a plain run after a compiled one is pixel-identical to one
# that never compiled; LoRAs are still patched in place (the compiled blocks read the same parameters). The bench
# runs a `compile` lever once untimed whenever the run before was not compiled, and keeps the first of those
# runs, less a timed one, as the measurement's `one_off_seconds`; the engine turns it on only where, besides
# PAYS_BELOW and MIN_PSNR_DB, the request's saving pays back that compilation (nothing owed once compiled).
# Measured on our 2-core CPU (1 thread), the tiny test SD1 model at 64 px, 4 steps, `hayai bench speed --levers
# compile --repeats 3` with a fresh inductor cache (gcc): 29.4 s to compile (one_off_seconds), then 1.08x
# denoising and 1.12x end to end (runs of 0.1 s: noise-level, and no gain), images identical to the exact run's;
# with inductor's on-disk cache warm from an earlier run, the compilation took 8.1 s. Earlier by hand, the same UNet
# compiled in 62 s, recompiled for 29 s after a memory-format change, and ran at 1.0x with pixels within 3e-6. So
# on this CPU it does not pay and the engine leaves it off; where it may is a GPU at native sizes, which a bench
# run there decides (`hayai bench speed --levers compile`).
