"""A1111 sampler / schedule-type names -> diffusers schedulers built from the model's own config."""

from __future__ import annotations

import importlib.util

import diffusers
import pytest
import torch

from hayai.errors import RequestError
from hayai.generation.samplers import (
    FLOW_SAMPLERS,
    SAMPLERS,
    SCHEDULE_TYPES,
    build_scheduler,
    default_sampler,
    resolve_schedule_type,
    split_legacy_sampler_name,
)

HAS_SCIPY = importlib.util.find_spec("scipy") is not None
# REFERENCE.md §3, written out independently of SAMPLERS: (class, schedule for "Automatic", extra config).
EXPECTED = {
    "Euler": ("EulerDiscreteScheduler", "Uniform", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", "Uniform", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", "Karras", {"algorithm_type": "dpmsolver++"}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", "Karras", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", "Karras", {}),
    "DPM2": ("KDPM2DiscreteScheduler", "Karras", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", "Karras", {}),
    "Heun": ("HeunDiscreteScheduler", "Uniform", {}),
    "LMS": ("LMSDiscreteScheduler", "Uniform", {}),
    "DDIM": ("DDIMScheduler", "Uniform", {}),
    "PLMS": ("PNDMScheduler", "Uniform", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", "Uniform", {}),
    "LCM": ("LCMScheduler", "Uniform", {}),
    "TCD": ("TCDScheduler", "Uniform", {}),  # Forge's name (not in A1111); for TCD and Hyper-SD 1-step LoRAs
}
SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def _sd1_config(**overrides):
    """The scheduler config SD1 models ship (betas of the real model; leading spacing, offset 1)."""
    return diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", **overrides
    ).config


def _sd3_config():
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config


def _sampler_param(name):
    return pytest.param(name, id=name)


def test_sampler_table_is_the_reference_table():
    assert list(SAMPLERS) == list(EXPECTED)
    assert set(FLOW_SAMPLERS) == {"Euler", "Heun"}


@pytest.mark.parametrize("name", [_sampler_param(n) for n in EXPECTED])
def test_every_sampler_builds_from_the_model_config(name):
    cls_name, automatic, extra = EXPECTED[name]
    scheduler = build_scheduler(name, "Automatic", _sd1_config(), flow_matching=False)
    config = scheduler.config
    assert type(scheduler).__name__ == cls_name
    # the model's training betas and offset are kept; only the sampling method changes
    assert config.beta_start == 0.00085
    assert config.beta_end == 0.012
    assert config.beta_schedule == "scaled_linear"
    assert config.steps_offset == 1
    for key, value in extra.items():
        assert config[key] == value, key
    assert bool(config.get("use_karras_sigmas")) is (automatic == "Karras")
    assert not config.get("use_exponential_sigmas")


def test_automatic_schedule_per_sampler():
    for name, (_, automatic, _) in EXPECTED.items():
        assert resolve_schedule_type(name, "Automatic", flow_matching=False) == automatic, name
    assert resolve_schedule_type("DPM++ 2M", "Automatic", False) == "Karras"
    assert resolve_schedule_type("Euler", "Automatic", False) == "Uniform"
    assert resolve_schedule_type("Euler", "Automatic", True) == "Simple"


def test_default_sampler():
    assert default_sampler(flow_matching=False) == "DPM++ 2M"
    assert default_sampler(flow_matching=True) == "Euler"


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("Uniform", {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False, "timestep_spacing": "leading"}),
        ("Karras", {"use_karras_sigmas": True, "use_exponential_sigmas": False, "use_beta_sigmas": False, "timestep_spacing": "leading"}),
        ("Exponential", {"use_karras_sigmas": False, "use_exponential_sigmas": True, "use_beta_sigmas": False}),
        pytest.param("Beta", {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": True}),
        ("SGM Uniform", {"use_karras_sigmas": False, "timestep_spacing": "trailing"}),
        ("Simple", {"use_karras_sigmas": False, "timestep_spacing": "trailing"}),
    ],
)
def test_schedule_type_sets_its_flag(schedule, expected):
    config = build_scheduler("Euler", schedule, _sd1_config(), flow_matching=False).config
    for key, value in expected.items():
        assert config[key] == value, key


def test_dpmpp_2m_sde_karras_from_legacy_name():
    base, schedule = split_legacy_sampler_name("DPM++ 2M SDE Karras")
    scheduler = build_scheduler(base, schedule, _sd1_config(), flow_matching=False)
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert scheduler.config.algorithm_type == "sde-dpmsolver++"
    assert scheduler.config.use_karras_sigmas is True


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
        ("DPM++ 2M", ("DPM++ 2M", None)),
        ("Foo Karras", ("Foo Karras", None)),  # not a known sampler + schedule: left alone
        ("Karras", ("Karras", None)),
    ],
)
def test_split_legacy_sampler_name(name, expected):
    assert split_legacy_sampler_name(name) == expected


# -- combinations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [("DDIM", "Karras"), ("DDIM", "Exponential"), ("PLMS", "Karras"), ("LCM", "Beta"), ("Euler a", "Karras")],
)
def test_schedule_the_scheduler_would_ignore_is_refused(sampler, schedule):
    with pytest.raises(RequestError) as caught:
        build_scheduler(sampler, schedule, _sd1_config(), flow_matching=False)
    message = str(caught.value)
    assert f"schedule_type={schedule!r}" in message
    assert repr(sampler) in message
    assert "Uniform" in message  # says what it does take


def _accepted_combinations():
    params = []
    for sampler in SAMPLERS:
        for schedule in SCHEDULE_TYPES:
            try:
                resolve_schedule_type(sampler, schedule, flow_matching=False)
            except RequestError:
                continue
            params.append(pytest.param(sampler, schedule, id=f"{sampler}-{schedule}"))
    return params


@pytest.mark.parametrize(("sampler", "schedule"), _accepted_combinations())
def test_accepted_schedule_is_honoured_by_the_scheduler(sampler, schedule):
    """Whatever resolve_schedule_type accepts must reach the scheduler's config (nothing silently dropped)."""
    concrete = resolve_schedule_type(sampler, schedule, flow_matching=False)
    # fewer training steps only to keep KDPM2's slow constructor quick; the flags are what is checked
    scheduler = build_scheduler(sampler, schedule, _sd1_config(num_train_timesteps=100), flow_matching=False)
    for key, value in SCHEDULE_TYPES[concrete].items():
        if key not in scheduler.config:
            # only an "off" may be skipped: the scheduler has no such option to turn on by mistake
            assert value is False, f"{type(scheduler).__name__} has no {key}, yet {schedule!r} needs {key}={value!r}"
            continue
        assert scheduler.config[key] == value


@pytest.mark.parametrize("schedule", ["SGM Uniform", "Simple"])
def test_dpmpp_sde_refuses_spacing_schedules_it_cannot_honour(schedule):
    """DPMSolverSinglestepScheduler has no timestep_spacing: the schedule would be silently dropped."""
    with pytest.raises(RequestError, match=f"schedule_type='{schedule}' does not apply to sampler 'DPM\\+\\+ SDE'"):
        build_scheduler("DPM++ SDE", schedule, _sd1_config(), flow_matching=False)


def test_schedule_type_overrides_the_model_configs_sigma_flags():
    karras_base = _sd1_config(use_karras_sigmas=True)
    uniform = build_scheduler("Euler", "Uniform", karras_base, flow_matching=False)
    assert uniform.config.use_karras_sigmas is False
    exponential = build_scheduler("Euler", "Exponential", karras_base, flow_matching=False)
    assert exponential.config.use_exponential_sigmas is True
    assert exponential.config.use_karras_sigmas is False


def test_unknown_sampler_and_schedule_are_refused():
    with pytest.raises(RequestError, match=r"sampler='Euler b' is not available"):
        build_scheduler("Euler b", "Automatic", _sd1_config(), flow_matching=False)
    with pytest.raises(RequestError, match=r"schedule_type='Cosine' is unknown"):
        build_scheduler("Euler", "Cosine", _sd1_config(), flow_matching=False)


# -- the sigmas actually change --------------------------------------------------------------------


def _karras(sigma_max, sigma_min, n, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "UniPC"])
def test_karras_schedule_produces_karras_sigmas(sampler):
    karras = build_scheduler(sampler, "Karras", _sd1_config(), flow_matching=False)
    plain = build_scheduler(sampler, "Uniform", _sd1_config(), flow_matching=False)
    karras.set_timesteps(10)
    plain.set_timesteps(10)
    sigmas = karras.sigmas.double()
    assert sigmas.shape == plain.sigmas.shape
    assert not torch.allclose(sigmas, plain.sigmas.double())
    # Karras et al. (2022) eq. 5 between the schedule's own end points, then the final 0
    assert torch.allclose(sigmas[:10], _karras(sigmas[0], sigmas[9], 10), rtol=1e-4)
    assert sigmas[-1] == 0


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DPM2", "Heun"])
def test_karras_sigmas_match_raw_diffusers(sampler):
    built = build_scheduler(sampler, "Karras", _sd1_config(), flow_matching=False)
    raw = getattr(diffusers, EXPECTED[sampler][0]).from_config(
        _sd1_config(), use_karras_sigmas=True, **EXPECTED[sampler][2]
    )
    plain = build_scheduler(sampler, "Uniform", _sd1_config(), flow_matching=False)
    for scheduler in (built, raw, plain):
        scheduler.set_timesteps(10)
    assert torch.equal(built.sigmas, raw.sigmas)
    assert not torch.equal(built.sigmas, plain.sigmas)


def test_simple_schedule_uses_trailing_timesteps():
    simple = build_scheduler("Euler", "Simple", _sd1_config(), flow_matching=False)
    uniform = build_scheduler("Euler", "Uniform", _sd1_config(), flow_matching=False)
    simple.set_timesteps(10)
    uniform.set_timesteps(10)
    assert simple.timesteps[0] == 999  # trailing starts at the last training step
    assert uniform.timesteps[0] == 901  # leading, offset 1
    assert not torch.equal(simple.timesteps, uniform.timesteps)


def test_builds_from_a_pndm_model_config():
    """SD1.5 ships a PNDMScheduler config; building another sampler from it keeps its betas."""
    base = diffusers.PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        set_alpha_to_one=False, steps_offset=1,
    ).config
    scheduler = build_scheduler("DPM++ 2M", "Automatic", base, flow_matching=False)
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)
    assert scheduler.config.use_karras_sigmas is True


# -- flow matching (SD3, Flux) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "cls_name"),
    [("Euler", "FlowMatchEulerDiscreteScheduler"), ("Heun", "FlowMatchHeunDiscreteScheduler")],
)
@pytest.mark.parametrize("schedule", ["Automatic", "Simple"])
def test_flow_samplers_keep_the_models_shift(sampler, cls_name, schedule):
    scheduler = build_scheduler(sampler, schedule, _sd3_config(), flow_matching=True)
    assert type(scheduler).__name__ == cls_name
    assert scheduler.config.shift == 3.0
    assert "timestep_spacing" not in scheduler.config


def test_flow_euler_sigmas_equal_the_model_scheduler():
    built = build_scheduler("Euler", "Automatic", _sd3_config(), flow_matching=True)
    raw = diffusers.FlowMatchEulerDiscreteScheduler.from_config(_sd3_config())
    built.set_timesteps(10)
    raw.set_timesteps(10)
    assert torch.equal(built.sigmas, raw.sigmas)


@pytest.mark.parametrize(("sampler", "schedule"), [("Euler", "Karras"), ("Euler", "Uniform"), ("Heun", "Exponential")])
def test_flow_samplers_refuse_other_schedules(sampler, schedule):
    with pytest.raises(RequestError, match=rf"schedule_type={schedule!r} does not apply .* takes: Simple"):
        build_scheduler(sampler, schedule, _sd3_config(), flow_matching=True)


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a", "DDIM"])
def test_noise_prediction_samplers_refused_for_flow_models(sampler):
    with pytest.raises(RequestError, match=r"flow-matching models .*choose one of: Euler, Heun"):
        build_scheduler(sampler, "Automatic", _sd3_config(), flow_matching=True)
