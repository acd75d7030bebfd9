"""Out of memory in any phase: the engine steps down, finishes the image, records it, remembers it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hayai.generation.engine import Engine
from hayai.generation.request import GenerationRequest
from hayai.models.families import Family
from hayai.store import Store


def _inject_oom_once(module):
    def hook(_module, _args):
        handle.remove()
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

    handle = module.register_forward_pre_hook(hook)


@pytest.fixture(scope="module")
def reference(tiny_folders, tmp_path_factory):
    """The un-faulted image, made once (in a home of its own: the tests' `hayai_home` comes later)."""
    out = tmp_path_factory.mktemp("reference")
    request = GenerationRequest(prompt="a green circle", model=str(tiny_folders[Family.SD1]), steps=3, seed=77,
                                output_dir=str(out))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HAYAI_HOME", str(out / "hayai_home"))
        return request, np.asarray(Engine(device="cpu").generate(request).images[0].image)


@pytest.mark.parametrize("phase, target", [("text_encode", "text_encoder"), ("denoise", "unet"),
                                           ("vae_decode", "vae.decoder")])
def test_oom_in_each_phase_steps_down_and_finishes_the_same_image(reference, phase, target, tmp_path):
    request, expected = reference
    engine = Engine(device="cpu")
    loaded = engine.load(request.model)
    module = loaded.pipe
    for part in target.split("."):
        module = getattr(module, part)
    _inject_oom_once(module)
    result = engine.generate(request)
    np.testing.assert_array_equal(np.asarray(result.images[0].image), expected)
    assert result.events == [{"event": "out_of_memory", "phase": phase, "strategy": "cpu-float32",
                              "next": "cpu-float32+vae-tiling"}]
    assert result.strategy == "cpu-float32+vae-tiling"
    run = Store().run(result.run_id)
    assert run.status == "ok" and run.events[1:] == result.events  # events[0] says why the plan was chosen

    # the next run of this model, size and batch starts where the last one finished
    again = Engine(device="cpu").generate(request)
    assert again.strategy == "cpu-float32+vae-tiling" and again.events == []
    assert "last ran to the end" in again.plan_reason


def test_oom_with_the_leanest_strategy_is_a_clear_error(tiny_folders):
    from hayai.errors import HayaiError

    engine = Engine(device="cpu", strategy="cpu-float32+vae-tiling+split")
    loaded = engine.load(str(tiny_folders[Family.SD1]))
    _inject_oom_once(loaded.pipe.unet)
    with pytest.raises(HayaiError, match="out of memory during denoise even with the leanest strategy"):
        engine.generate(GenerationRequest(prompt="x", model=str(tiny_folders[Family.SD1]), steps=2, seed=1))
    assert Store().runs(limit=1)[0].status == "error"


def test_split_batch_gives_the_batched_images(tiny_folders, tmp_path):
    request = GenerationRequest(prompt="a square", model=str(tiny_folders[Family.SDXL]), steps=2, seed=5,
                                batch_size=2, output_dir=str(tmp_path))
    whole = Engine(device="cpu").generate(request)
    split = Engine(device="cpu", strategy="cpu-float32+vae-tiling+split").generate(request)
    assert split.strategy == "cpu-float32+vae-tiling+split"
    for a, b in zip(whole.images, split.images):
        # one sample per denoiser call: the same numbers up to float rounding of batched kernels
        assert np.abs(np.asarray(a.image, dtype=int) - np.asarray(b.image, dtype=int)).max() <= 2
