"""Block caching (diffusers' first-block cache) on transformer denoisers: it skips the blocks after the first on
the steps it should (counted with hooks), leaves the model as it was, is recorded in the infotext and is refused
by UNet models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hayai.errors import RequestError
from hayai.generation.engine import Engine
from hayai.generation.infotext import format_infotext, parse_infotext, request_from_infotext, request_to_params
from hayai.generation.request import GenerationRequest
from hayai.memory.apply import split_denoiser_batch
from hayai.models.families import Family
from hayai.models.tiny import build_tiny_pipeline
from hayai.speed.block_cache import BlockCache, cached_blocks
from hayai.speed.levers import applied
from hayai.sweep.axes import parse_axis

# On the tiny model the first block's residual changes by 24-45% a step (relative mean): a threshold of 0.8
# skips every step after the first, one of 0.01 none.
SKIP_ALL, SKIP_NONE = 0.8, 0.01


def _tiny_sd3(layers: int = 4):
    """The tiny SD3 pipeline with a deeper transformer: of its 2 blocks the first always runs and SD3's last
    is not cached, which leaves nothing to skip; with 4, blocks 1 and 2 are cached."""
    from diffusers import SD3Transformer2DModel

    pipe = build_tiny_pipeline(Family.SD3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe.transformer = SD3Transformer2DModel.from_config({**pipe.transformer.config, "num_layers": layers})
    return pipe


@pytest.fixture(scope="module")
def sd3_pipe():
    return _tiny_sd3()


def _call(pipe, steps=4, seed=1):
    return pipe("a red circle", num_inference_steps=steps, guidance_scale=5.0, width=64, height=64,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images


class _Calls:
    """Counts the runs of each block's first layer (a skipped block is still called, but runs no layer)."""

    def __init__(self, blocks):
        first = [next(m for m in block.modules() if isinstance(m, torch.nn.Linear)) for block in blocks]
        self.counts = [0] * len(first)
        self.handles = [layer.register_forward_hook(self._counter(i)) for i, layer in enumerate(first)]

    def _counter(self, index):
        def hook(*_):
            self.counts[index] += 1
        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _hooks_left(module) -> list[str]:
    """Modules that still carry a diffusers hook (a registry left empty is the module as it was)."""
    return [name for name, m in module.named_modules()
            if getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks]


def test_block_cache_skips_the_blocks_after_the_first_on_slow_steps(sd3_pipe):
    transformer = sd3_pipe.transformer
    blocks = list(transformer.transformer_blocks)
    assert cached_blocks(transformer) == blocks[:3]  # SD3's last block (no text output) is not cached
    before = _call(sd3_pipe)
    calls = _Calls(blocks)
    try:
        with BlockCache(transformer, SKIP_ALL) as cache:
            cached = _call(sd3_pipe)
    finally:
        calls.remove()
    # 4 evaluations (CFG halves batched): all blocks on the first; then only the first block and the last
    assert (cache.state.sub_calls, cache.state.computed, cache.state.skipped) == (4, 1, 3)
    assert calls.counts == [4, 1, 1, 4]
    assert np.abs(cached - before).max() > 1e-3
    # removed after the call: no hook left, the next call is the plain one
    assert _hooks_left(transformer) == []
    np.testing.assert_array_equal(_call(sd3_pipe), before)


def test_a_threshold_no_step_falls_below_runs_every_block_and_changes_nothing(sd3_pipe):
    before = _call(sd3_pipe)
    calls = _Calls(sd3_pipe.transformer.transformer_blocks)
    try:
        with BlockCache(sd3_pipe.transformer, SKIP_NONE) as cache:
            computed = _call(sd3_pipe)
    finally:
        calls.remove()
    assert cache.state.skipped == 0 and calls.counts == [4] * 4
    np.testing.assert_array_equal(computed, before)


def test_block_cache_keeps_each_sample_s_residuals_under_the_batch_split():
    """The batch-split strategy calls the transformer once per CFG half: each compares with its own residuals."""
    pipe = _tiny_sd3()
    with BlockCache(pipe.transformer, SKIP_ALL):
        batched = _call(pipe)
    split_denoiser_batch(pipe.transformer)
    with BlockCache(pipe.transformer, SKIP_ALL) as cache:
        split = _call(pipe)
    assert (cache.state.sub_calls, cache.state.computed) == (8, 2)  # each half computed on the first step only
    np.testing.assert_allclose(split, batched, atol=2e-5)


def test_block_cache_covers_both_block_lists_of_flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    assert cached_blocks(transformer) == blocks
    g = torch.Generator().manual_seed(0)
    image, text, pooled = (torch.randn(shape, generator=g) for shape in ((1, 16, 4), (1, 8, 32), (1, 32)))

    def denoise():  # three evaluations along a slowly moving input, as the steps of a call
        return [transformer(hidden_states=image + 0.001 * step, encoder_hidden_states=text, pooled_projections=pooled,
                            timestep=torch.tensor([1.0 - 0.01 * step]), img_ids=torch.zeros(16, 3),
                            txt_ids=torch.zeros(8, 3)).sample for step in range(3)]

    calls = _Calls(blocks)
    try:
        with torch.no_grad(), BlockCache(transformer, SKIP_ALL) as cache:
            denoise()
    finally:
        calls.remove()
    assert (cache.state.computed, cache.state.skipped) == (1, 2) and calls.counts == [3, 1, 1]
    assert _hooks_left(transformer) == []


def test_too_few_blocks_to_cache_is_a_clear_error():
    with pytest.raises(RequestError, match="at least 2 blocks to cache \\(all but SD3's last\\); this "
                                         "SD3Transformer2DModel has 1"):
        BlockCache(build_tiny_pipeline(Family.SD3).transformer, 0.1)


# -- the request, the engine, the infotext ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd3-4-blocks")
    _tiny_sd3().save_pretrained(folder, safe_serialization=True)
    return str(folder)


def test_the_engine_runs_the_knob_and_leaves_the_exact_call_plain(sd3_folder):
    import diffusers

    base = {"prompt": "a small red circle", "model": sd3_folder, "steps": 4, "cfg_scale": 5.0, "sampler": "Euler",
            "width": 64, "height": 64, "seed": 7}
    engine = Engine()
    exact = engine.generate(GenerationRequest(**base), save=False)
    cached = engine.generate(GenerationRequest(**base, block_cache=SKIP_ALL), save=False)
    again = engine.generate(GenerationRequest(**base), save=False)  # the same loaded model, after the lever
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(sd3_folder)  # what a plain user writes
    pipe.set_progress_bar_config(disable=True)
    raw = pipe("a small red circle", negative_prompt="", num_inference_steps=4, guidance_scale=5.0, width=64,
               height=64, generator=[torch.Generator("cpu").manual_seed(7)]).images[0]
    pixels = {name: np.asarray(result.images[0].image.convert("RGB")) for name, result in
              (("exact", exact), ("cached", cached), ("again", again))}
    np.testing.assert_array_equal(pixels["exact"], np.asarray(raw.convert("RGB")))
    np.testing.assert_array_equal(pixels["again"], pixels["exact"])
    assert not np.array_equal(pixels["cached"], pixels["exact"])
    assert exact.request.block_cache is None and cached.request.block_cache == SKIP_ALL


def test_levers_context_installs_the_block_cache_and_removes_it(sd3_pipe):
    request = GenerationRequest(prompt="x", block_cache=0.1).resolve(Family.SD3, (64, 64))
    with applied(sd3_pipe, request) as installed:
        assert set(installed) == {"block_cache"} and installed["block_cache"].state.threshold == 0.1
        assert _hooks_left(sd3_pipe.transformer)
    assert _hooks_left(sd3_pipe.transformer) == []
    with applied(sd3_pipe, GenerationRequest(prompt="x", block_cache=0).resolve(Family.SD3, (64, 64))) as installed:
        assert installed == {}  # 0 is off


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL], ids=lambda f: f.value)
def test_unet_models_refuse_the_block_cache(family):
    with pytest.raises(RequestError, match=f"block_cache=0.1 applies to transformer models \\(SD3, Flux\\), not to "
                                           f"{family.value} models; leave it unset"):
        GenerationRequest(prompt="x", block_cache=0.1).resolve(family, (64, 64))
    # a preset leaves it off instead of failing; it is in no preset, for transformer models either
    assert GenerationRequest(prompt="x", speed="balanced").resolve(family, (64, 64)).block_cache == 0.0
    assert GenerationRequest(prompt="x", speed="balanced").resolve(Family.SD3, (64, 64)).block_cache == 0.0


def _infotext(request: GenerationRequest) -> str:
    return format_infotext(request.prompt, request.negative_prompt,
                           request_to_params(request, model_name="tiny", model_hash=None, version="hayai test"))


@pytest.mark.parametrize(("changes", "written"), [
    ({"block_cache": 0.1}, "0.1"),
    ({"block_cache": 0.25, "speed": "balanced"}, "0.25"),
    ({"speed": "balanced"}, "0"),  # a preset writes every knob, so the record survives a retuned preset
    ({}, None),
], ids=["set", "set-with-a-preset", "preset", "unset"])
def test_infotext_round_trips_the_block_cache(changes, written):
    request = GenerationRequest(prompt="a red circle", model="tiny", seed=5, **changes).resolve(Family.SD3, (64, 64))
    text = _infotext(request)
    assert parse_infotext(text).params.get("Block cache") == written
    back, unused = request_from_infotext(parse_infotext(text))
    assert back.resolve(Family.SD3, (64, 64)) == request and "Block cache" not in unused


def test_block_cache_is_a_sweep_axis_with_a_checked_range():
    axis = parse_axis("Block cache=0,0.1,0.2")
    assert axis.kind.key == "block_cache" and axis.values == (0.0, 0.1, 0.2)
    assert parse_axis("fbcache=0.05").kind.key == "block_cache"
    with pytest.raises(RequestError, match="block_cache=1.5 must be between 0 and 1"):
        GenerationRequest(prompt="x", block_cache=1.5)
