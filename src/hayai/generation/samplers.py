"""A1111 sampler and schedule-type names, and the diffusers schedulers they stand for.

The table follows diffusers' scheduler overview and A1111's `sd_samplers_kdiffusion.py`
(../shared/REFERENCE.md §3). A scheduler is always built from the model's own scheduler config, so the
training-time betas and timestep spacing of the model are kept and only the sampling method changes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from hayai.errors import RequestError

__all__ = [
    "SAMPLERS",
    "FLOW_SAMPLERS",
    "SCHEDULE_TYPES",
    "SamplerSpec",
    "default_sampler",
    "resolve_schedule_type",
    "build_scheduler",
    "split_legacy_sampler_name",
]


@dataclass(frozen=True)
class SamplerSpec:
    scheduler: str  # diffusers class name
    kwargs: dict = field(default_factory=dict)
    automatic_schedule: str = "Uniform"  # what A1111's "Automatic" schedule type means for this sampler


SAMPLERS: dict[str, SamplerSpec] = {
    "Euler": SamplerSpec("EulerDiscreteScheduler"),
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "Karras"),
    "DPM++ 2M SDE": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "Karras"),
    "DPM++ SDE": SamplerSpec("DPMSolverSinglestepScheduler", {}, "Karras"),
    "DPM2": SamplerSpec("KDPM2DiscreteScheduler", {}, "Karras"),
    "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler", {}, "Karras"),
    "Heun": SamplerSpec("HeunDiscreteScheduler"),
    "LMS": SamplerSpec("LMSDiscreteScheduler"),
    "DDIM": SamplerSpec("DDIMScheduler"),
    "PLMS": SamplerSpec("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": SamplerSpec("UniPCMultistepScheduler"),
    "LCM": SamplerSpec("LCMScheduler"),
    "TCD": SamplerSpec("TCDScheduler"),  # Forge's and ComfyUI's name; for TCD and Hyper-SD's 1-step LoRAs
}

# SD3 and Flux predict a velocity along a straight path: they take flow-matching schedulers.
FLOW_SAMPLERS: dict[str, SamplerSpec] = {
    "Euler": SamplerSpec("FlowMatchEulerDiscreteScheduler", {}, "Simple"),
    "Heun": SamplerSpec("FlowMatchHeunDiscreteScheduler", {}, "Simple"),
}

# Schedule type -> scheduler config overrides. "Uniform" is the scheduler's own spacing. Every type sets
# all three sigma flags, so a model whose config already asks for Karras sigmas still gets what was named.
_NO_SIGMA_FLAGS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
SCHEDULE_TYPES: dict[str, dict] = {
    "Automatic": {},
    "Uniform": _NO_SIGMA_FLAGS,
    "Karras": {**_NO_SIGMA_FLAGS, "use_karras_sigmas": True},
    "Exponential": {**_NO_SIGMA_FLAGS, "use_exponential_sigmas": True},
    "Beta": {**_NO_SIGMA_FLAGS, "use_beta_sigmas": True},  # needs scipy
    "SGM Uniform": {**_NO_SIGMA_FLAGS, "timestep_spacing": "trailing"},
    "Simple": {**_NO_SIGMA_FLAGS, "timestep_spacing": "trailing"},
}

# Which schedule types each scheduler class honours (others would be silently ignored: refuse them).
_SIGMA_SCHEDULES = {"Uniform", "Karras", "Exponential", "Beta", "SGM Uniform", "Simple"}
_SPACING_ONLY = {"Uniform", "SGM Uniform", "Simple"}
_SIGMAS_ONLY = {"Uniform", "Karras", "Exponential", "Beta"}  # schedulers with no timestep_spacing setting
_ACCEPTS = {
    "EulerDiscreteScheduler": _SIGMA_SCHEDULES,
    "EulerAncestralDiscreteScheduler": _SPACING_ONLY,
    "DPMSolverMultistepScheduler": _SIGMA_SCHEDULES,
    "DPMSolverSinglestepScheduler": _SIGMAS_ONLY,
    "KDPM2DiscreteScheduler": _SIGMA_SCHEDULES,
    "KDPM2AncestralDiscreteScheduler": _SIGMA_SCHEDULES,
    "HeunDiscreteScheduler": _SIGMA_SCHEDULES,
    "LMSDiscreteScheduler": _SIGMA_SCHEDULES,
    "DDIMScheduler": _SPACING_ONLY,
    "PNDMScheduler": _SPACING_ONLY,
    "UniPCMultistepScheduler": _SIGMA_SCHEDULES,
    "LCMScheduler": _SPACING_ONLY,
    "TCDScheduler": _SPACING_ONLY,
    "FlowMatchEulerDiscreteScheduler": {"Simple"},
    "FlowMatchHeunDiscreteScheduler": {"Simple"},
}


def _table(flow_matching: bool) -> dict[str, SamplerSpec]:
    return FLOW_SAMPLERS if flow_matching else SAMPLERS


def default_sampler(flow_matching: bool) -> str:
    """A1111's default for noise-prediction models is "DPM++ 2M" (Karras); flow models take "Euler"."""
    return "Euler" if flow_matching else "DPM++ 2M"


def split_legacy_sampler_name(name: str) -> tuple[str, str | None]:
    """Old A1111 names carry the schedule: "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras")."""
    for schedule in ("Karras", "Exponential"):
        suffix = " " + schedule
        if name.endswith(suffix) and name[: -len(suffix)] in SAMPLERS:
            return name[: -len(suffix)], schedule
    return name, None


def check_sampler(sampler: str, flow_matching: bool) -> SamplerSpec:
    table = _table(flow_matching)
    if sampler not in table:
        kind = "flow-matching models (SD3, Flux)" if flow_matching else "this model"
        raise RequestError(f"sampler={sampler!r} is not available for {kind}; choose one of: {', '.join(table)}")
    return table[sampler]


def resolve_schedule_type(sampler: str, schedule_type: str, flow_matching: bool) -> str:
    """The concrete schedule type ("Automatic" becomes the sampler's own default); refuses combinations
    the scheduler would silently ignore."""
    spec = check_sampler(sampler, flow_matching)
    if schedule_type not in SCHEDULE_TYPES:
        raise RequestError(f"schedule_type={schedule_type!r} is unknown; choose one of: {', '.join(SCHEDULE_TYPES)}")
    concrete = spec.automatic_schedule if schedule_type == "Automatic" else schedule_type
    accepted = _ACCEPTS[spec.scheduler]
    if concrete not in accepted:
        raise RequestError(
            f"schedule_type={schedule_type!r} does not apply to sampler {sampler!r}; it takes: {', '.join(sorted(accepted))}"
        )
    return concrete


def build_scheduler(sampler: str, schedule_type: str, base_config: dict, flow_matching: bool):
    """A diffusers scheduler for `sampler` + `schedule_type`, built from the model's scheduler config."""
    import diffusers

    spec = check_sampler(sampler, flow_matching)
    concrete = resolve_schedule_type(sampler, schedule_type, flow_matching)
    cls = getattr(diffusers, spec.scheduler)
    overrides = {**spec.kwargs, **SCHEDULE_TYPES[concrete]}
    if flow_matching:
        # flow schedulers space timesteps their own way; "Simple" is their native schedule
        overrides = dict(spec.kwargs)
    # a scheduler without a sigma option needs no "off" for it (what it must honour, _ACCEPTS guarantees)
    accepted = inspect.signature(cls.__init__).parameters
    overrides = {key: value for key, value in overrides.items() if key in accepted or value is not False}
    return cls.from_config(base_config, **overrides)
