"""A1111 infotext: the exact text we write, round trips back to the request, and reading A1111's own."""

from __future__ import annotations

import dataclasses
import re

import pytest

from hayai.errors import RequestError
from hayai.generation.infotext import (
    Infotext,
    format_infotext,
    parse_infotext,
    request_from_infotext,
    request_to_params,
)
from hayai.generation.request import MAX_SEED, GenerationRequest

# A1111's reader pattern (modules/infotext_utils.py), written out here so the test does not trust our copy
A1111_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
VERSION = "hayai 0.1.0"
MODEL_HASH = "6ce0161689"

# what A1111 1.10 writes for a hires-fixed SD1.5 image with two LoRAs
A1111_INFOTEXT = (
    "masterpiece, best quality, 1girl, solo, cherry blossoms, (detailed eyes:1.2), <lora:add_detail:0.6>\n"
    "<lora:ghibli_style:0.8>\n"
    "Negative prompt: (worst quality, low quality:1.4), bad hands,\n"
    "watermark\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3055125428, Size: 512x768, "
    "Model hash: 879db523c3, Model: dreamshaper_8, VAE hash: 235745af8d, VAE: vae-ft-mse-840000-ema-pruned.safetensors, "
    "Denoising strength: 0.35, Clip skip: 2, Hires upscale: 1.5, Hires steps: 12, Hires upscaler: R-ESRGAN 4x+ Anime6B, "
    'Lora hashes: "add_detail: 7c6bad76eb54, ghibli_style: 0123456789ab", Version: v1.10.1'
)


def make_request(**changes: object) -> GenerationRequest:
    """A resolved request, as the engine hands it over."""
    fields = dict(
        prompt="a cat, masterpiece",
        negative_prompt="blurry, lowres",
        model="v1-5-pruned-emaonly",
        steps=25,
        cfg_scale=7.0,
        sampler="DPM++ 2M",
        schedule_type="Karras",
        width=512,
        height=768,
        seed=1234,
    )
    fields.update(changes)
    return GenerationRequest(**fields)


def infotext_of(request: GenerationRequest, extra: dict | None = None) -> str:
    params = request_to_params(request, model_name=request.model, model_hash=MODEL_HASH, version=VERSION, extra=extra)
    return format_infotext(request.prompt, request.negative_prompt, params)


# -- writing -------------------------------------------------------------------------------------


def test_exact_infotext_for_a_known_request():
    assert infotext_of(make_request()) == (
        "a cat, masterpiece\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: hayai 0.1.0"
    )


def test_exact_infotext_with_clip_skip_extras_and_no_negative_prompt():
    request = make_request(negative_prompt="", cfg_scale=7.5, clip_skip=2)
    extra = {"Lora hashes": "add_detail: 7c6bad76eb54, style: 0123456789ab", "ENSD": 31337}
    assert infotext_of(request, extra) == (
        "a cat, masterpiece\n"
        "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1234, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, "
        'Lora hashes: "add_detail: 7c6bad76eb54, style: 0123456789ab", ENSD: 31337, Version: hayai 0.1.0'
    )


def test_params_order_and_omitted_values():
    params = request_to_params(make_request(), model_name="m", model_hash=None, version=VERSION, extra={"ENSD": None})
    assert list(params) == [
        "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model", "Clip skip", "Speed",
        "Step cache", "Token merging ratio", "Block cache", "Tiny VAE", "ENSD", "Version",
    ]
    text = format_infotext("p", "", params)
    assert "Model hash" not in text and "Clip skip" not in text and "ENSD" not in text and "Speed" not in text
    assert text.endswith("Size: 512x768, Model: m, Version: hayai 0.1.0")


def test_each_image_gets_its_own_seed():
    request = make_request(seed=MAX_SEED, batch_size=2)
    texts = [infotext_of(dataclasses.replace(request, seed=seed)) for seed in request.seeds()]
    assert f"Seed: {MAX_SEED}," in texts[0] and "Seed: 0," in texts[1]


@pytest.mark.parametrize(
    ("cfg", "printed"),
    [(7.0, "7"), (7, "7"), (7.5, "7.5"), (4.25, "4.25"), (1 / 3, "0.3333333333333333"), (0.1 + 0.2, "0.30000000000000004")],
)
def test_cfg_scale_printed_like_a1111_and_exact(cfg, printed):
    request = make_request(cfg_scale=cfg)
    text = infotext_of(request)
    assert f"CFG scale: {printed}," in text
    assert request_from_infotext(parse_infotext(text))[0].cfg_scale == cfg


def test_values_quoted_exactly_like_a1111():
    params = {"Ka": "x, y", "Kb": 'say "hi"', "Kc": "line 1\nline 2", "Kd": "a: b", "Ke": "日本, 語", "Kf": 3}
    text = format_infotext("p", "", params)
    assert text == 'p\nKa: "x, y", Kb: say "hi", Kc: "line 1\\nline 2", Kd: "a: b", Ke: "日本, 語", Kf: 3'
    assert parse_infotext(text).params == {k: str(v) for k, v in params.items()}


def test_last_line_has_at_least_three_a1111_matches():
    request = make_request(prompt="line one\nsecond: line, with commas", negative_prompt="neg\nmore")
    last = infotext_of(request).split("\n")[-1]
    pairs = dict(A1111_PARAM_RE.findall(last))
    assert len(pairs) >= 3
    assert pairs["Steps"] == "25" and pairs["Seed"] == "1234" and pairs["Size"] == "512x768"


@pytest.mark.parametrize("key", ["Lora (hashes)", "A", " Steps", "CFG: scale"])
def test_format_refuses_a_key_a1111_cannot_read_back(key):
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        format_infotext("p", "", {"Steps": 1, key: "x"})


def test_request_to_params_needs_a_resolved_request():
    with pytest.raises(RequestError, match=r"not resolved .*resolve\(\)"):
        request_to_params(GenerationRequest(prompt="x"), model_name="m", model_hash=None, version=VERSION)


def test_extra_keys_cannot_replace_standard_ones():
    with pytest.raises(ValueError, match="Seed"):
        request_to_params(make_request(), model_name="m", model_hash=None, version=VERSION, extra={"Seed": 1})


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"cfg_scale": 7.5, "clip_skip": 2},
        {"prompt": "a cat\nin a hat, (red:1.2)\nstyle: oil painting", "negative_prompt": "blurry\nlowres, text: none"},
        {"negative_prompt": ""},
        {"prompt": "猫, 桜: 春\n富士山", "negative_prompt": "ぼやけ, 低画質"},
        {"model": "my model, v2: final"},
        {"model": 'C:\\models\\a "b".safetensors'},
        {"sampler": "Euler a", "schedule_type": "Uniform", "seed": 0, "steps": 1, "width": 1024, "height": 64},
        {"seed": MAX_SEED, "cfg_scale": 0.0, "clip_skip": 12},
        {"prompt": "Steps: 1, Sampler: Euler, CFG scale: 3\nthe line above looks like parameters"},
    ],
    ids=["plain", "cfg-clip", "multiline-colons", "no-negative", "japanese", "quoted-model", "escaped-model", "edges", "max", "params-like-prompt"],
)
def test_format_parse_request_round_trip(changes):
    request = make_request(**changes)
    back, unused = request_from_infotext(parse_infotext(infotext_of(request)))
    assert back == request
    assert unused == {"Model hash": MODEL_HASH}  # "Version" names the program that wrote it: nothing to warn of


def test_extras_come_back_unused_and_unquoted():
    extra = {"Lora hashes": "add_detail: 7c6bad76eb54, style: 0123456789ab", "VAE hash": "235745af8d"}
    back, unused = request_from_infotext(parse_infotext(infotext_of(make_request(), extra)))
    assert back == make_request()
    assert list(unused.items()) == [  # Lora hashes are used: the LoRAs come back through the prompt's tags
        ("Model hash", MODEL_HASH),
        ("VAE hash", "235745af8d"),
    ]


# -- reading -------------------------------------------------------------------------------------


def test_parse_a1111_1_10_infotext():
    info = parse_infotext(A1111_INFOTEXT)
    assert info.prompt == (
        "masterpiece, best quality, 1girl, solo, cherry blossoms, (detailed eyes:1.2), <lora:add_detail:0.6>\n"
        "<lora:ghibli_style:0.8>"
    )
    assert info.negative_prompt == "(worst quality, low quality:1.4), bad hands,\nwatermark"
    assert list(info.params.items()) == [
        ("Steps", "28"), ("Sampler", "DPM++ 2M"), ("Schedule type", "Karras"), ("CFG scale", "6.5"),
        ("Seed", "3055125428"), ("Size", "512x768"), ("Model hash", "879db523c3"), ("Model", "dreamshaper_8"),
        ("VAE hash", "235745af8d"), ("VAE", "vae-ft-mse-840000-ema-pruned.safetensors"),
        ("Denoising strength", "0.35"), ("Clip skip", "2"), ("Hires upscale", "1.5"), ("Hires steps", "12"),
        ("Hires upscaler", "R-ESRGAN 4x+ Anime6B"),
        ("Lora hashes", "add_detail: 7c6bad76eb54, ghibli_style: 0123456789ab"), ("Version", "v1.10.1"),
    ]

    request, unused = request_from_infotext(info)
    assert request == GenerationRequest(
        prompt=info.prompt, negative_prompt=info.negative_prompt, model="dreamshaper_8", steps=28, cfg_scale=6.5,
        sampler="DPM++ 2M", schedule_type="Karras", width=512, height=768, seed=3055125428, clip_skip=2,
        denoising_strength=0.35, hr_scale=1.5, hr_steps=12, hr_upscaler="R-ESRGAN 4x+ Anime6B",
    )
    assert request.kind == "hires"
    assert list(unused) == ["Model hash", "VAE hash", "VAE"]


def test_old_sampler_name_carries_the_schedule():
    text = "a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 512x512"
    request, _ = request_from_infotext(parse_infotext(text))
    assert (request.sampler, request.schedule_type) == ("DPM++ 2M", "Karras")


def test_last_line_with_fewer_than_three_pairs_is_prompt():
    info = parse_infotext("a photo\nstyle: oil, mood: calm")
    assert info == Infotext(prompt="a photo\nstyle: oil, mood: calm", negative_prompt="", params={})


def test_prompt_only():
    assert parse_infotext("  a cat, best quality \n") == Infotext("a cat, best quality", "", {})


def test_lines_after_negative_prompt_belong_to_it():
    info = parse_infotext("a\nb\nNegative prompt: c\nd\nSteps: 1, Sampler: Euler, CFG scale: 7")
    assert (info.prompt, info.negative_prompt) == ("a\nb", "c\nd")
    assert info.params == {"Steps": "1", "Sampler": "Euler", "CFG scale": "7"}


def test_missing_keys_keep_request_defaults():
    request, unused = request_from_infotext(parse_infotext("a cat\nSteps: 30, Seed: 5, Foo bar: baz"))
    assert request == GenerationRequest(prompt="a cat", steps=30, seed=5)
    assert unused == {"Foo bar": "baz"}


@pytest.mark.parametrize(
    ("key", "value"),
    [("Steps", "twenty"), ("CFG scale", "high"), ("Seed", "12a"), ("Size", "512 by 512"), ("Clip skip", "2.5")],
)
def test_malformed_value_names_key_and_value(key, value):
    text = f"a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, {key}: {value}"
    with pytest.raises(RequestError, match=re.escape(f"{key}={value!r}")):
        request_from_infotext(parse_infotext(text))


def test_out_of_range_value_is_refused_by_the_request():
    with pytest.raises(RequestError, match="steps=5000"):
        request_from_infotext(parse_infotext("a\nSteps: 5000, Sampler: Euler, CFG scale: 7"))


# -- image to image and hires keys (from the field table) -----------------------------------------


def test_img2img_writes_denoising_strength_before_clip_skip_as_a1111():
    text = infotext_of(make_request(init_image="in.png", denoising_strength=0.35, clip_skip=2))
    assert "Model: v1-5-pruned-emaonly, Denoising strength: 0.35, Clip skip: 2, Version" in text


def test_txt2img_writes_no_image_to_image_keys():
    text = infotext_of(make_request())
    assert "Denoising" not in text and "Mask" not in text and "Hires" not in text


def test_inpaint_keys_are_written_only_when_not_a1111_defaults():
    plain = infotext_of(make_request(init_image="in.png", mask="m.png"))
    assert "Mask blur: 4" in plain
    assert not any(key in plain for key in ("Masked content", "Inpaint area", "Masked area padding", "Mask mode"))
    custom = infotext_of(make_request(init_image="in.png", mask="m.png", masked_content="fill", inpaint_only_masked=True,
                                      inpaint_padding=16, mask_invert=True, mask_blur=0))
    assert ("Mask blur: 0, Mask mode: Inpaint not masked, Masked content: fill, Inpaint area: Only masked, "
            "Masked area padding: 16") in custom


@pytest.mark.parametrize("changes", [
    dict(init_image="in.png", denoising_strength=0.4, resize_mode="Crop and resize", denoise_steps="diffusers"),
    dict(init_image="in.png", mask="m.png", masked_content="latent noise", inpaint_only_masked=True, inpaint_padding=8,
         mask_invert=True, mask_blur=9, denoising_strength=0.9),
    dict(hr_scale=1.5, hr_steps=7, hr_upscaler="Lanczos", denoising_strength=0.5, hr_sampler="Euler",
         hr_prompt="a dog", hr_negative_prompt="cat"),
    dict(hr_resize_x=1024, hr_resize_y=1536, denoising_strength=0.5),
    dict(progressive=(512, 768, 1024), width=512, height=512, hr_upscaler="Latent (bicubic)"),
])
def test_image_to_image_and_hires_settings_round_trip(changes):
    request = make_request(**changes)
    back, unused = request_from_infotext(parse_infotext(infotext_of(request)))
    # the input image and mask are files: an infotext names neither (the hayai record does), nor the resize mode
    expected = dataclasses.replace(request, init_image=None, mask=None, resize_mode="Just resize")
    assert dataclasses.replace(back, init_image=None, mask=None) == expected
    assert list(unused) == ["Model hash"]


def test_a1111_hires_resize_is_read():
    text = "a\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.5, Hires resize: 1024x768"
    request, _ = request_from_infotext(parse_infotext(text))
    assert (request.hr_resize_x, request.hr_resize_y, request.denoising_strength) == (1024, 768, 0.5)
    assert request.passes() == [(512, 512), (1024, 768)]
