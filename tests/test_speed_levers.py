"""Speed levers: each changes what it claims (counted with hooks), `exact` is the plain call, every lever is
recorded in the infotext and the record, and is a sweep axis."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hayai.errors import RequestError
from hayai.generation.engine import Engine
from hayai.generation.infotext import (
    format_infotext,
    parse_infotext,
    request_from_infotext,
    request_to_params,
)
from hayai.generation.request import GenerationRequest
from hayai.memory.apply import split_denoiser_batch
from hayai.models.families import Family
from hayai.models.tiny import build_tiny_pipeline
from hayai.speed.levers import applied
from hayai.speed.step_cache import StepCache, cached_blocks
from hayai.speed.token_merging import TokenMerging, bipartite_merge, draw_destinations
from hayai.sweep.axes import parse_axis


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _call(pipe, steps=6, seed=1):
    return pipe("a red circle", num_inference_steps=steps, guidance_scale=7.0, width=64, height=64,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images


@pytest.fixture(scope="module")
def sd1_pipe():
    pipe = build_tiny_pipeline(Family.SD1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _Calls:
    """Counts the forward calls of modules."""

    def __init__(self, modules: dict):
        self.counts = dict.fromkeys(modules, 0)
        self.handles = [m.register_forward_hook(self._counter(name)) for name, m in modules.items()]

    def _counter(self, name):
        def hook(*_):
            self.counts[name] += 1
        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


# -- step caching --------------------------------------------------------------------------------------


def test_step_cache_skips_the_deep_blocks_on_the_steps_between(sd1_pipe):
    unet = sd1_pipe.unet
    deep = dict(cached_blocks(unet))
    assert set(deep) == {"down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1.resnets.0",
                         "up_blocks.1.attentions.0"}
    shallow = {"conv_in": unet.conv_in, "last_resnet": unet.up_blocks[-1].resnets[-1],
               "last_attention": unet.up_blocks[-1].attentions[-1], "conv_out": unet.conv_out}
    # a block answered from the cache is still called, but runs none of its layers: count its first layer
    first_layer = {name: next(m for m in block.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
                   for name, block in deep.items()}
    calls = _Calls({**first_layer, **shallow})
    try:
        with StepCache(unet, 3) as cache:
            _call(sd1_pipe, steps=7)
    finally:
        calls.remove()
    # 7 evaluations (one per step, CFG halves batched): full at 0, 3, 6; cached at the other 4
    assert (cache.state.full_evaluations, cache.state.cached_evaluations) == (3, 4)
    assert all(calls.counts[name] == 3 for name in deep), calls.counts
    assert cache.state.skipped == dict.fromkeys(deep, 4)
    assert all(calls.counts[name] == 7 for name in shallow), calls.counts


def test_step_cache_changes_the_image_and_leaves_no_hook_behind(sd1_pipe):
    before = _call(sd1_pipe)
    with StepCache(sd1_pipe.unet, 2):
        cached = _call(sd1_pipe)
    assert np.abs(cached - before).max() > 1e-3
    np.testing.assert_array_equal(_call(sd1_pipe), before)
    with StepCache(sd1_pipe.unet, 1):  # every evaluation full: nothing reused
        np.testing.assert_array_equal(_call(sd1_pipe), before)


def test_step_cache_keeps_one_cache_per_sub_call_under_the_batch_split():
    """The batch-split strategy calls the UNet once per CFG half: each must reuse its own deep features."""
    pipe = build_tiny_pipeline(Family.SD1)
    pipe.set_progress_bar_config(disable=True)
    with StepCache(pipe.unet, 3):
        batched = _call(pipe)
    split_denoiser_batch(pipe.unet)
    with StepCache(pipe.unet, 3) as cache:
        split = _call(pipe)
    assert cache.state.cached_evaluations == 4
    np.testing.assert_allclose(split, batched, atol=2e-5)


# -- token merging -------------------------------------------------------------------------------------


def test_bipartite_merge_halves_the_tokens_and_unmerge_restores_the_grid():
    x = torch.randn(2, 64, 8)
    merge, unmerge = bipartite_merge(x, 8, 8, 32, draw_destinations(8, 8, torch.Generator().manual_seed(0)))
    merged = merge(x)
    assert merged.shape == (2, 32, 8)
    back = unmerge(merged)
    assert back.shape == x.shape
    # the 16 destinations (one per 2x2 cell) and the 16 sources kept come back unchanged: at least 32 tokens
    unchanged = torch.isclose(back, x).all(dim=-1).sum(dim=1)
    assert (unchanged >= 16).all() and (unchanged < 64).all()


def test_token_merging_shrinks_self_attention_at_full_resolution_only(sd1_pipe):
    unet = sd1_pipe.unet
    blocks = [(name, m) for name, m in unet.named_modules() if type(m).__name__ == "BasicTransformerBlock"]
    seen: dict[str, set[int]] = {name: set() for name, _ in blocks}
    handles = [block.attn1.to_q.register_forward_hook(lambda _m, args, _o, name=name: seen[name].add(args[0].shape[1]))
               for name, block in blocks]
    try:
        before = _call(sd1_pipe, steps=2)
        plain = {name: set(tokens) for name, tokens in seen.items()}
        for tokens in seen.values():
            tokens.clear()
        with TokenMerging(unet, 0.5) as merging:
            merged = _call(sd1_pipe, steps=2)
    finally:
        for handle in handles:
            handle.remove()
    full = 8 * 8  # the 64 px image's latent grid
    top = [name for name, tokens in plain.items() if tokens == {full}]
    assert top and all(seen[name] == {full // 2} for name in top)  # half the queries of the full-resolution blocks
    assert all(seen[name] == plain[name] for name in plain if name not in top)  # lower resolutions untouched
    assert merging.plan.attentions == 2 * len(top) and merging.plan.merged_tokens == 2 * len(top) * full // 2
    assert np.abs(merged - before).max() > 1e-4
    np.testing.assert_array_equal(_call(sd1_pipe, steps=2), before)  # the processors are restored
    assert merged.shape == before.shape


def test_token_merging_gives_the_same_image_under_the_batch_split():
    pipe = build_tiny_pipeline(Family.SD1)
    pipe.set_progress_bar_config(disable=True)
    with TokenMerging(pipe.unet, 0.5):
        batched = _call(pipe, steps=3)
    split_denoiser_batch(pipe.unet)
    with TokenMerging(pipe.unet, 0.5) as merging:
        split = _call(pipe, steps=3)
    assert merging.plan.attentions > 0
    np.testing.assert_allclose(split, batched, atol=2e-5)


def test_token_merging_gives_the_same_image_every_call(sd1_pipe):
    with TokenMerging(sd1_pipe.unet, 0.5):
        first = _call(sd1_pipe, steps=2)
    with TokenMerging(sd1_pipe.unet, 0.5):
        np.testing.assert_array_equal(_call(sd1_pipe, steps=2), first)


# -- the request, the engine, the infotext ---------------------------------------------------------------


def test_exact_is_the_plain_diffusers_call(tiny_folders, tmp_path):
    folder = tiny_folders[Family.SD1]
    request = GenerationRequest(prompt="a small red circle", model=str(folder), steps=4, cfg_scale=5.0, sampler="Euler",
                                width=64, height=64, seed=7, speed="exact", output_dir=str(tmp_path))
    ours = Engine().generate(request, save=False)
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder)  # what a plain user writes
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    raw = pipe("a small red circle", negative_prompt="", num_inference_steps=4, guidance_scale=5.0, width=64, height=64,
               generator=[torch.Generator("cpu").manual_seed(7)]).images
    np.testing.assert_array_equal(_pixels(ours.images[0].image), _pixels(raw[0]))
    assert ours.request.step_cache is None and ours.request.token_merging is None


def test_balanced_preset_is_resolved_into_the_request_and_changes_the_image(tiny_folders):
    folder = str(tiny_folders[Family.SD1])
    engine = Engine()
    base = {"prompt": "a small red circle", "model": folder, "steps": 6, "sampler": "Euler", "seed": 3}
    exact = engine.generate(GenerationRequest(**base), save=False)
    balanced = engine.generate(GenerationRequest(**base, speed="balanced"), save=False)
    assert (balanced.request.speed, balanced.request.step_cache, balanced.request.token_merging) == ("balanced", 3, 0.0)
    assert not np.array_equal(_pixels(exact.images[0].image), _pixels(balanced.images[0].image))
    # a knob the user sets wins over the preset: balanced with step caching off is the exact image
    off = engine.generate(GenerationRequest(**base, speed="balanced", step_cache=0), save=False)
    np.testing.assert_array_equal(_pixels(off.images[0].image), _pixels(exact.images[0].image))


def test_reproducing_a_balanced_image_gives_the_same_pixels(tiny_folders, tmp_path):
    request = GenerationRequest(prompt="a yellow star", model=str(tiny_folders[Family.SD1]), steps=5, seed=11,
                                speed="balanced", token_merging=0.5, output_dir=str(tmp_path / "first"))
    first = Engine().generate(request)
    again = Engine().reproduce(first.images[0].path, output_dir=str(tmp_path / "again"))
    assert (again.request.step_cache, again.request.token_merging) == (3, 0.5)
    np.testing.assert_array_equal(_pixels(again.images[0].image), _pixels(first.images[0].image))


def test_the_levers_refuse_models_without_a_unet():
    request = GenerationRequest(prompt="x", step_cache=3)
    with pytest.raises(RequestError, match="step_cache=3 applies to UNet models"):
        request.resolve(Family.SD3, (64, 64))
    # a preset leaves the UNet levers off for a transformer model instead of failing
    resolved = GenerationRequest(prompt="x", speed="balanced").resolve(Family.SD3, (64, 64))
    assert (resolved.step_cache, resolved.token_merging) == (0, 0.0)


def test_levers_context_installs_nothing_for_exact(sd1_pipe):
    request = GenerationRequest(prompt="x").resolve(Family.SD1, (64, 64))
    with applied(sd1_pipe, request) as installed:
        assert installed == {}
        assert not hasattr(sd1_pipe.unet.conv_in, "_diffusers_hook") or not sd1_pipe.unet.conv_in._diffusers_hook.hooks


def _infotext(request: GenerationRequest) -> str:
    params = request_to_params(request, model_name="tiny", model_hash="0123456789", version="hayai test")
    return format_infotext(request.prompt, request.negative_prompt, params)


@pytest.mark.parametrize("changes", [
    {"speed": "balanced"},
    {"speed": "balanced", "step_cache": 0},
    {"step_cache": 4},
    {"token_merging": 0.3},
    {"speed": "balanced", "token_merging": 0.5, "step_cache": 2},
], ids=["balanced", "balanced-no-cache", "step-cache", "tome", "all"])
def test_infotext_round_trips_each_lever(changes):
    request = GenerationRequest(prompt="a red circle", model="tiny", seed=5, **changes).resolve(Family.SD1, (512, 512))
    text = _infotext(request)
    back, _ = request_from_infotext(parse_infotext(text))
    assert back.resolve(Family.SD1, (512, 512)) == request
    params = parse_infotext(text).params
    assert params.get("Token merging ratio") == (None if request.token_merging is None else f"{request.token_merging:g}")
    assert params.get("Step cache") == (None if request.step_cache is None else str(request.step_cache))


def test_exact_writes_no_speed_keys_and_reads_a1111_token_merging():
    request = GenerationRequest(prompt="a red circle", seed=5).resolve(Family.SD1, (512, 512))
    params = parse_infotext(_infotext(request)).params
    assert not {"Speed", "Step cache", "Token merging ratio"} & set(params)
    a1111 = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Token merging ratio: 0.5"
    back, unused = request_from_infotext(parse_infotext(a1111))
    assert back.token_merging == 0.5 and "Token merging ratio" not in unused


def test_levers_are_sweep_axes():
    assert parse_axis("speed=exact,balanced").values == ("exact", "balanced")
    assert parse_axis("Step cache=1-3").values == (1, 2, 3)
    axis = parse_axis("tome=0,0.25,0.5")
    assert axis.kind.key == "token_merging" and axis.values == (0.0, 0.25, 0.5)


def test_knob_ranges_are_checked():
    with pytest.raises(RequestError, match="token_merging=0.95 must be between 0 and 0.9"):
        GenerationRequest(prompt="x", token_merging=0.95)
    with pytest.raises(RequestError, match="speed='turbo' must be one of: exact, balanced"):
        GenerationRequest(prompt="x", speed="turbo")
    assert dataclasses.replace(GenerationRequest(prompt="x"), step_cache=2).step_cache == 2


# -- a tiny autoencoder ----------------------------------------------------------------------------------


def _tiny_autoencoder(folder, latent_channels=4):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                          latent_channels=latent_channels)
    vae.save_pretrained(folder)
    return str(folder)


def test_tiny_vae_decodes_instead_of_the_model_vae(tiny_folders, tmp_path):
    folder = _tiny_autoencoder(tmp_path / "taesd")
    engine = Engine()
    base = {"prompt": "a small red circle", "model": str(tiny_folders[Family.SD1]), "steps": 2, "sampler": "Euler",
            "seed": 3}
    exact = engine.generate(GenerationRequest(**base), save=False)
    model_vae = engine.load(str(tiny_folders[Family.SD1])).pipe.vae
    calls = _Calls({"model_decoder": model_vae.decoder})
    try:
        tiny = engine.generate(GenerationRequest(**base, tiny_vae=folder), save=False)
    finally:
        calls.remove()
    assert calls.counts["model_decoder"] == 0
    assert tiny.images[0].image.size == exact.images[0].image.size
    assert not np.array_equal(_pixels(tiny.images[0].image), _pixels(exact.images[0].image))
    assert "vae_decode" in tiny.timings
    request = tiny.request
    back, _ = request_from_infotext(parse_infotext(_infotext(request)))
    assert back.tiny_vae == folder and parse_infotext(_infotext(request)).params["Tiny VAE"] == folder


def test_tiny_vae_must_match_the_latent_channels(tiny_folders, tmp_path):
    folder = _tiny_autoencoder(tmp_path / "taesd3", latent_channels=16)
    request = GenerationRequest(prompt="x", model=str(tiny_folders[Family.SD1]), steps=1, tiny_vae=folder)
    with pytest.raises(RequestError, match="has 16 latent channels; this model's VAE has 4"):
        Engine().generate(request, save=False)
    with pytest.raises(RequestError, match="not a diffusers AutoencoderTiny folder"):
        Engine().generate(dataclasses.replace(request, tiny_vae=str(tmp_path)), save=False)


@pytest.mark.parametrize("kind", ["img2img", "hires"])
def test_every_kind_gets_the_levers(kind, tiny_folders, tmp_path):
    """The levers sit in the one pipeline call every kind makes: img2img and both hires passes are cached too."""
    from PIL import Image

    changes = {"hr_scale": 1.5, "hr_upscaler": "Latent"} if kind == "hires" else {}
    if kind == "img2img":
        path = tmp_path / "input.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        changes = {"init_image": str(path), "denoising_strength": 1.0, "denoise_steps": "exact"}
    base = GenerationRequest(prompt="a red circle", model=str(tiny_folders[Family.SD1]), steps=6, sampler="Euler",
                             seed=4, **changes)
    assert base.kind == kind
    engine = Engine()
    exact = engine.generate(base, save=False)
    calls = {"cached": 0}
    unet = engine.load(str(tiny_folders[Family.SD1])).pipe.unet
    handle = unet.mid_block.resnets[0].register_forward_hook(lambda *_: calls.__setitem__("cached", calls["cached"] + 1))
    try:
        cached = engine.generate(dataclasses.replace(base, step_cache=3), save=False)
    finally:
        handle.remove()
    passes = 2 if kind == "hires" else 1
    assert calls["cached"] == 2 * passes  # the mid block ran on evaluations 0 and 3 of each 6-step pass only
    assert not np.array_equal(_pixels(exact.images[0].image), _pixels(cached.images[0].image))


def test_the_cli_runs_a_preset_and_from_reproduces_it(tmp_path):
    """As a user runs it on the built-in model: `--speed balanced --tome 0.3`, then `--from` that image."""
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from hayai.cli.main import app

    def invoke(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, (result.output, result.exception)
        return json.loads(result.stdout)

    made = invoke("generate", "a small red circle at the top left on a white background", "--speed", "balanced",
                  "--tome", "0.3", "--steps", "6", "--seed", "5", "-o", tmp_path / "first", "--json")
    assert (made["request"]["speed"], made["request"]["step_cache"], made["request"]["token_merging"]) == ("balanced", 3, 0.3)
    path = made["images"][0]["path"]
    info = CliRunner().invoke(app, ["info", path]).stdout
    assert "Speed: balanced" in info and "Step cache: 3" in info and "Token merging ratio: 0.3" in info
    again = invoke("generate", "--from", path, "-o", tmp_path / "again", "--json")
    np.testing.assert_array_equal(np.asarray(Image.open(again["images"][0]["path"])), np.asarray(Image.open(path)))


def test_every_preset_is_described_in_the_help():
    from hayai.generation.fields import FIELD
    from hayai.speed.presets import DESCRIPTIONS, PRESETS

    assert set(DESCRIPTIONS) == set(PRESETS) and FIELD["speed"].choices == tuple(PRESETS)
    assert "balanced (step caching every 3 steps)" in FIELD["speed"].help and PRESETS["balanced"] == {"step_cache": 3}
