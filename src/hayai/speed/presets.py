"""Speed presets: named settings of the raw speed knobs. Pure data, imported by the field table.

A preset fills only the knobs a request leaves unset (None); a knob the user sets wins. A lever that
does not apply to a family (step caching and token merging work on UNets: SD1.x, SD2, SDXL; block caching
on transformers: SD3, Flux) is off in every preset for that family, while asking for it explicitly is an
error (`check_knobs`). The preset values are chosen from measurements (benchmarks/speed_levers.py; the
figures are in the README). Block caching is in no preset: it is not measured on real SD3 or Flux weights,
and a random tiny model says nothing about its quality.

`fast` sets no knob: it adds a few-step LoRA of the model from the catalog (`Engine.with_speed_preset`),
whose metadata then sets the steps, sampler and CFG it was distilled for (`hayai.speed.few_step`).
"""

from __future__ import annotations

__all__ = ["DESCRIPTIONS", "FEW_STEP_PRESETS", "KNOBS", "PRESETS", "TRANSFORMER_LEVERS", "UNET_LEVERS", "check_knobs",
           "preset_knobs"]

# knob -> its "off" value
KNOBS = {"step_cache": 0, "token_merging": 0.0, "block_cache": 0.0}

PRESETS: dict[str, dict[str, float]] = {
    "exact": {},  # the plain diffusers call, pixel for pixel
    "balanced": {"step_cache": 3},  # deep UNet features reused for 2 steps of every 3
    # a few-step LoRA of the model from the catalog (hayai.speed.few_step.for_model), which sets steps, sampler
    # and CFG; no step caching on top (reusing features across 4 large steps costs far more than at 20)
    "fast": {},
}
FEW_STEP_PRESETS = ("fast",)  # presets that add a few-step LoRA to the request

# what each preset does, in words (the --speed help)
DESCRIPTIONS = {"exact": "the plain diffusers call", "balanced": "step caching every 3 steps",
                "fast": "a few-step LoRA of the model, 4 steps at CFG 1; `hayai train distill` makes one"}

# levers implemented for UNet denoisers only (see hayai.speed.step_cache and hayai.speed.token_merging)
UNET_LEVERS = ("step_cache", "token_merging")
# levers implemented for transformer denoisers only (see hayai.speed.block_cache)
TRANSFORMER_LEVERS = ("block_cache",)


def _foreign(flow_matching: bool) -> tuple[tuple[str, ...], str]:
    """The levers a family's denoiser does not have, and the models they apply to (flow-matching families
    have a transformer, no UNet; the others a UNet)."""
    if flow_matching:
        return UNET_LEVERS, "UNet models (SD1.x, SD2, SDXL)"
    return TRANSFORMER_LEVERS, "transformer models (SD3, Flux)"


def preset_knobs(preset: str, flow_matching: bool) -> dict[str, float]:
    """Every knob's value under `preset` for a family, with the levers it does not have off."""
    values = {**KNOBS, **PRESETS[preset]}
    values.update({name: KNOBS[name] for name in _foreign(flow_matching)[0]})
    return values


def check_knobs(knobs: dict[str, float], flow_matching: bool, family_name: str) -> None:
    from hayai.errors import RequestError

    levers, models = _foreign(flow_matching)
    for name in levers:
        if knobs.get(name) not in (None, KNOBS[name]):
            raise RequestError(f"{name}={knobs[name]} applies to {models}, not to {family_name} models; "
                               "leave it unset")
