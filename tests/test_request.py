"""GenerationRequest: validation on construction, resolution against a model family, serialisation."""

from __future__ import annotations

import random

import pytest

from hayai.errors import HayaiError, RequestError
from hayai.generation.request import MAX_SEED, GenerationRequest
from hayai.models.families import Family


def _request(**overrides) -> GenerationRequest:
    return GenerationRequest(prompt=overrides.pop("prompt", "a cat"), **overrides)


# -- construction: each bad field is named with its value -------------------------------------

BAD_FIELDS = [
    pytest.param({"steps": 0}, "steps", "0", id="steps-0"),
    pytest.param({"steps": 1001}, "steps", "1001", id="steps-1001"),
    pytest.param({"steps": "20"}, "steps", "'20'", id="steps-str"),
    pytest.param({"steps": 20.0}, "steps", "20.0", id="steps-float"),
    pytest.param({"steps": True}, "steps", "True", id="steps-bool"),
    pytest.param({"cfg_scale": -1}, "cfg_scale", "-1", id="cfg-negative"),
    pytest.param({"cfg_scale": float("nan")}, "cfg_scale", "nan", id="cfg-nan"),
    pytest.param({"cfg_scale": "7"}, "cfg_scale", "'7'", id="cfg-str"),
    pytest.param({"seed": -2}, "seed", "-2", id="seed-minus-2"),
    pytest.param({"seed": 2**32}, "seed", str(2**32), id="seed-2**32"),
    pytest.param({"batch_size": 0}, "batch_size", "0", id="batch-size-0"),
    pytest.param({"batch_size": 65}, "batch_size", "65", id="batch-size-65"),
    pytest.param({"batch_count": 0}, "batch_count", "0", id="batch-count-0"),
    pytest.param({"clip_skip": 0}, "clip_skip", "0", id="clip-skip-0"),
    pytest.param({"width": 63}, "width", "63", id="width-63"),
    pytest.param({"width": 9000}, "width", "9000", id="width-9000"),
    pytest.param({"height": 63}, "height", "63", id="height-63"),
    pytest.param({"width": 512.0}, "width", "512.0", id="width-float"),
    pytest.param({"width": True}, "width", "True", id="width-bool"),
    pytest.param({"model": "  "}, "model", "'  '", id="model-blank"),
    pytest.param({"prompt": None}, "prompt", "None", id="prompt-none"),
    pytest.param({"sampler": "Euler b"}, "sampler", "'Euler b'", id="sampler-unknown"),
    pytest.param({"sampler": "dpm++ 2m"}, "sampler", "'dpm++ 2m'", id="sampler-wrong-case"),
    pytest.param({"schedule_type": "Cosine"}, "schedule_type", "'Cosine'", id="schedule-unknown"),
    pytest.param({"image_format": "gif"}, "image_format", "'gif'", id="format-gif"),
    pytest.param({"filename_pattern": "out/{index}"}, "filename_pattern", "'out/{index}'", id="pattern-slash"),
    pytest.param({"filename_pattern": "out\\{index}"}, "filename_pattern", "'out\\\\{index}'", id="pattern-backslash"),
    pytest.param({"filename_pattern": ".{index}"}, "filename_pattern", "'.{index}'", id="pattern-leading-dot"),
    pytest.param({"filename_pattern": "{index}-{colour}"}, "filename_pattern", "'{index}-{colour}'", id="pattern-unknown-field"),
    pytest.param({"filename_pattern": "{index:%Y}"}, "filename_pattern", "'{index:%Y}'", id="pattern-bad-spec"),
    pytest.param({"filename_pattern": "{prompt}-{steps}"}, "filename_pattern", "'{prompt}-{steps}'", id="pattern-no-index-or-seed"),
    pytest.param({"filename_pattern": ""}, "filename_pattern", "''", id="pattern-empty"),
    pytest.param(
        {"sampler": "DPM++ 2M Karras", "schedule_type": "Exponential"}, "schedule_type", "'Exponential'",
        id="legacy-name-conflicting-schedule",
    ),
]


@pytest.mark.parametrize(("overrides", "field", "value"), BAD_FIELDS)
def test_bad_field_is_named_with_its_value(overrides, field, value):
    with pytest.raises(RequestError) as caught:
        _request(**overrides)
    message = str(caught.value)
    assert f"{field}={value}" in message, message
    assert caught.value.exit_code == 2


def test_unknown_sampler_lists_the_known_ones():
    with pytest.raises(RequestError, match=r"choose one of: Euler, Euler a, DPM\+\+ 2M,"):
        _request(sampler="Euler b")


def test_legacy_conflict_names_the_legacy_sampler_too():
    with pytest.raises(RequestError) as caught:
        _request(sampler="DPM++ 2M Karras", schedule_type="Exponential")
    assert "sampler='DPM++ 2M Karras'" in str(caught.value)
    assert "'Karras'" in str(caught.value)


def test_request_error_is_a_value_error_and_a_hayai_error():
    with pytest.raises(ValueError):
        _request(steps=0)
    with pytest.raises(HayaiError):
        _request(steps=0)


@pytest.mark.parametrize("seed", [-1, 0, MAX_SEED])
def test_seed_bounds_are_inclusive(seed):
    assert _request(seed=seed).seed == seed


@pytest.mark.parametrize(
    "pattern", ["{index:05d}-{seed}", "{seed}", "{date}-{time}-{index}", "{model}_{sampler}_{cfg:.1f}_{seed}"]
)
def test_good_filename_patterns_are_kept(pattern):
    assert _request(filename_pattern=pattern).filename_pattern == pattern


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("{prompt.upper}-{index}", id="attribute-accepted"),
        pytest.param("{prompt.foo}-{index}", id="attribute-error"),
        pytest.param("{index[0]}", id="item-access"),
    ],
)
def test_pattern_with_attribute_or_item_access_is_a_request_error(pattern):
    with pytest.raises(RequestError, match="filename_pattern="):
        _request(filename_pattern=pattern)


def test_escaped_index_braces_do_not_count_as_index():
    with pytest.raises(RequestError, match="filename_pattern="):
        _request(filename_pattern="{{index}}-{prompt}")


# -- legacy A1111 sampler names ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("legacy", "sampler", "schedule"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras"),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
        ("Euler Karras", "Euler", "Karras"),
    ],
)
def test_legacy_sampler_name_is_split(legacy, sampler, schedule):
    request = _request(sampler=legacy)
    assert (request.sampler, request.schedule_type) == (sampler, schedule)


def test_legacy_sampler_name_with_matching_schedule_is_accepted():
    request = _request(sampler="DPM++ 2M Karras", schedule_type="Karras")
    assert (request.sampler, request.schedule_type) == ("DPM++ 2M", "Karras")


def test_plain_sampler_name_keeps_schedule_type():
    request = _request(sampler="Euler a", schedule_type="Uniform")
    assert (request.sampler, request.schedule_type) == ("Euler a", "Uniform")


# -- resolve() against a family ------------------------------------------------------------------


def test_resolve_sd1_defaults():
    resolved = _request(seed=5).resolve(Family.SD1, (512, 512))
    assert (resolved.width, resolved.height) == (512, 512)
    assert (resolved.sampler, resolved.schedule_type) == ("DPM++ 2M", "Karras")
    assert resolved.seed == 5


def test_resolve_sd3_defaults_to_flow_euler_simple():
    resolved = _request(seed=5).resolve(Family.SD3, (1024, 1024))
    assert (resolved.width, resolved.height) == (1024, 1024)
    assert (resolved.sampler, resolved.schedule_type) == ("Euler", "Simple")


def test_resolve_uses_native_size_per_axis_and_keeps_explicit_size():
    resolved = _request(width=640).resolve(Family.SDXL, (1024, 768))
    assert (resolved.width, resolved.height) == (640, 768)


def test_resolve_does_not_change_the_original():
    request = _request()
    resolved = request.resolve(Family.SD1, (512, 512), rng=random.Random(0))
    assert request.sampler is None and request.width is None and request.seed == -1
    assert resolved is not request


def test_width_not_multiple_of_16_fails_on_sd3_with_suggestion():
    with pytest.raises(RequestError) as caught:
        _request(width=1000).resolve(Family.SD3, (1024, 1024))
    message = str(caught.value)
    assert "width=1000" in message
    assert "multiple of 16" in message
    assert "992" in message and "1008" in message


def test_height_checked_like_width():
    with pytest.raises(RequestError, match=r"height=1000 .*multiple of 16"):
        _request(height=1000).resolve(Family.SD3, (1024, 1024))


def test_width_1000_works_on_sd1():
    resolved = _request(width=1000).resolve(Family.SD1, (512, 512))
    assert resolved.width == 1000


def test_width_not_multiple_of_8_fails_on_sd1():
    with pytest.raises(RequestError, match=r"width=1001 must be a multiple of 8 .*\(try 1000 or 1008\)"):
        _request(width=1001).resolve(Family.SD1, (512, 512))


def test_noise_prediction_sampler_refused_on_sd3_naming_allowed_ones():
    with pytest.raises(RequestError) as caught:
        _request(sampler="DPM++ 2M").resolve(Family.SD3, (1024, 1024))
    message = str(caught.value)
    assert "sampler='DPM++ 2M'" in message
    assert "Euler" in message and "Heun" in message


def test_clip_skip_refused_on_sd3_but_fine_on_sd1():
    with pytest.raises(RequestError, match=r"clip_skip=2 .*sd3"):
        _request(clip_skip=2).resolve(Family.SD3, (1024, 1024))
    assert _request(clip_skip=2).resolve(Family.SD1, (512, 512)).clip_skip == 2


def test_schedule_that_sampler_ignores_is_refused_at_resolve():
    with pytest.raises(RequestError, match=r"schedule_type='Karras' does not apply to sampler 'DDIM'"):
        _request(sampler="DDIM", schedule_type="Karras").resolve(Family.SD1, (512, 512))


def test_random_seed_is_drawn_from_the_given_rng():
    resolved = _request().resolve(Family.SD1, (512, 512), rng=random.Random(1234))
    assert resolved.seed == random.Random(1234).randint(0, MAX_SEED)
    assert 0 <= resolved.seed <= MAX_SEED


def test_random_seeds_differ_between_rng_states():
    rng = random.Random(7)
    seeds = {_request().resolve(Family.SD1, (512, 512), rng=rng).seed for _ in range(5)}
    assert len(seeds) == 5
    assert all(0 <= s <= MAX_SEED for s in seeds)


# -- seeds() -------------------------------------------------------------------------------------


def test_seeds_are_consecutive_over_the_whole_run():
    request = _request(seed=100, batch_size=3, batch_count=2)
    assert request.total_images == 6
    assert request.seeds() == [100, 101, 102, 103, 104, 105]


def test_seeds_wrap_at_32_bits():
    assert _request(seed=MAX_SEED, batch_size=2).seeds() == [MAX_SEED, 0]


def test_seeds_need_a_resolved_seed():
    with pytest.raises(RequestError, match="resolve"):
        _request().seeds()


# -- serialisation ---------------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip():
    request = _request(
        negative_prompt="blurry", model="tiny-sd1", steps=7, cfg_scale=4.5, sampler="DPM++ 2M Karras",
        width=640, height=384, seed=42, batch_size=2, batch_count=3, clip_skip=2, output_dir="/tmp/x",
        filename_pattern="{seed}", image_format="webp",
    )
    data = request.to_dict()
    assert data["sampler"] == "DPM++ 2M" and data["schedule_type"] == "Karras"
    assert GenerationRequest.from_dict(data) == request


def test_resolved_request_round_trips():
    resolved = _request().resolve(Family.SD3, (1024, 1024), rng=random.Random(0))
    assert GenerationRequest.from_dict(resolved.to_dict()) == resolved


def test_from_dict_names_unknown_keys():
    data = _request().to_dict() | {"sampler_name": "Euler", "denoise": 0.5}
    with pytest.raises(RequestError) as caught:
        GenerationRequest.from_dict(data)
    assert "denoise, sampler_name" in str(caught.value)


def test_from_dict_validates_values():
    data = _request().to_dict() | {"steps": 0}
    with pytest.raises(RequestError, match="steps=0"):
        GenerationRequest.from_dict(data)


def test_from_dict_missing_prompt_is_a_request_error():
    with pytest.raises(RequestError, match="prompt"):
        GenerationRequest.from_dict({"steps": 3})
