"""Execution levers: how a run computes, not what it draws (the same image up to float rounding).

- `channels_last`: the denoiser's weights in channels-last memory format (NHWC convolutions), which some
  kernels run faster (cuDNN on tensor cores; on our CPUs it measured 0.99x, reference §11).
- `openvino`: the UNet converted to OpenVINO and run by its CPU plugin (`hayai.speed.openvino`, the
  `[openvino]` extra). It has a one-off cost, the conversion, so it is on only where the time it saves on
  the request (steps x images) pays that back; `hayai.speed.openvino.decide` judges it, not `PAYS_BELOW`.

They are not request fields: a request says what to make, and these change only how fast. Nor are they
on by default: `choose` turns one on for a model only where a measurement made here (`hayai bench speed
--levers channels_last`, at the size nearest the run's) shows that it pays end to end and that its pixels
stay within `MIN_PSNR_DB` of the exact run's; `memory.apply.apply_execution` applies them.

`torch.compile` (regional: diffusers' `compile_repeated_blocks`, which UNet2DConditionModel supports and
SD3's transformer does not) is not one yet: see the note at the end of this module.
"""

from __future__ import annotations

from hayai.errors import RequestError

__all__ = ["EXECUTION_LEVERS", "PAYS_BELOW", "MIN_PSNR_DB", "check", "choose", "usable"]

EXECUTION_LEVERS = {"channels_last": "the denoiser's weights in channels-last memory format",
                    "openvino": "the UNet converted to OpenVINO, run by its CPU plugin (the [openvino] extra)"}
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
    """The levers of `names` that apply under `strategy` (channels-last needs weights that stay put; OpenVINO
    replaces the whole-batch float32 CPU run)."""
    kept = set(names)
    if strategy.placement not in _WHOLE_WEIGHTS or strategy.fp8_storage:
        kept.discard("channels_last")
    if strategy.placement != "cpu" or strategy.dtype != "float32" or strategy.split_batch:
        kept.discard("openvino")
    return frozenset(kept)


def choose(measured, strategy=None, *, openvino: tuple[bool, str] | None = None) -> tuple[frozenset[str], list[str]]:
    """The execution levers that pay by `measured` (`hayai.store.speed_measurements.nearest`: one size and step
    count of one model on this device) and apply under `strategy` (when given), and why each is on or off.
    OpenVINO's pay-back depends on the request (`hayai.speed.openvino.decide`): `openvino` is that verdict
    (None: not judged, left out)."""
    by_lever = {m.lever: m for m in measured}
    chosen, reasons = set(), []
    for name in EXECUTION_LEVERS:
        m = by_lever.get(name)
        if name == "openvino":
            if openvino is not None:
                on, why = openvino
                chosen.update({name} if on else set())
                reasons.append(f"openvino: {'on' if on else 'off'}, {why}")
            continue
        if strategy is not None and not usable(frozenset([name]), strategy):
            reasons.append(f"{name}: off, {strategy.name} streams or casts the weights it would convert")
        elif m is None:
            reasons.append(f"{name}: off, not measured here at this size (`hayai bench speed --levers {name}`"
                           " measures it)")
        elif m.end_to_end_ratio >= PAYS_BELOW:
            reasons.append(f"{name}: off, {m.end_to_end_ratio:.2f}x end to end (it pays below {PAYS_BELOW:g}x)")
        elif m.psnr_db is None:
            reasons.append(f"{name}: off, its pixels were not compared (measured with --no-quality)")
        elif m.psnr_db < MIN_PSNR_DB:
            reasons.append(f"{name}: off, its images differ ({m.psnr_db:.1f} dB PSNR to the exact run's; "
                           f"{MIN_PSNR_DB:g} needed)")
        else:
            chosen.add(name)
            closeness = "identical" if m.psnr_db == float("inf") else f"{m.psnr_db:.1f} dB PSNR"
            reasons.append(f"{name}: on, {m.end_to_end_ratio:.2f}x end to end, images {closeness} to the exact run's")
    return frozenset(chosen), reasons


# torch.compile, not done: `denoiser.compile_repeated_blocks()` (diffusers 0.42.1; UNet2DConditionModel's
# `_repeated_blocks` is BasicTransformerBlock) compiled the tiny test UNet's blocks in 62 s on our 2-core CPU
# (gcc, inductor), recompiled for 29 s after a memory-format change, and then ran at 1.0x with pixels within
# 3e-6. To be a lever it needs: the bench to warm up (compile) a lever untimed whenever the one before ran
# otherwise, or to keep a compiled pipeline beside the plain one, since undoing it means a fresh pipeline
# (torch has no public uncompile); the engine to reload when a compiled model must run plain; and LoRA
# patching to keep working on compiled blocks (their weights are the same tensors, so in-place patches do).
