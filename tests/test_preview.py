"""Live previews from a step's latents: they change nothing in the run, the full decode of the last step is the
final image, and the fitted linear map looks like it on a trained VAE."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hayai.demo import BUILTIN_MODEL
from hayai.generation.engine import Engine
from hayai.generation.request import GenerationRequest
from hayai.models.families import Family


def _run(engine, request, methods=()):
    """The run's result and, per method, the preview of every denoising step (asked for inside the callback)."""
    previews: dict[str, list] = {m: [] for m in methods}

    def on_event(event):
        if event.phase == "denoise":
            for method in methods:
                previews[method].append(event.preview.image(method))

    return engine.generate(request, engine.run_options(save=False, progress=on_event)), previews


def _pixels(image):
    return np.asarray(image, dtype=float)


def test_previews_change_nothing_and_the_last_full_one_is_the_image(tiny_folders):
    engine = Engine()
    request = GenerationRequest(prompt="a small red circle", model=str(tiny_folders[Family.SD1]), steps=3, seed=5,
                                width=64, height=64, batch_size=2)
    plain, _ = _run(engine, request)
    watched, previews = _run(engine, request, ("cheap", "full", "auto"))
    assert [np.array_equal(_pixels(a.image), _pixels(b.image)) for a, b in zip(plain.images, watched.images)] == [True] * 2
    assert [p.size for p in previews["cheap"]] == [(8, 8)] * 3  # a pixel per latent
    assert [p.size for p in previews["full"]] == [(64, 64)] * 3 and previews["auto"][-1].size == (8, 8)
    # the last step decoded is the image (one image of the batch decoded alone may round a pixel otherwise)
    assert np.abs(_pixels(previews["full"][-1]) - _pixels(watched.images[0].image)).max() <= 1


def test_the_cheap_preview_looks_like_the_image_on_a_trained_vae():
    """The demo model's own VAE: the linear map fitted from it, at the last step, against the image scaled to
    the latents' size (mean absolute difference per channel, 0-255) and against a flat image of its mean colour."""
    engine = Engine()
    request = GenerationRequest(prompt="a large red square in the middle on a white background", model=str(BUILTIN_MODEL),
                                seed=3)
    result, previews = _run(engine, request, ("cheap",))
    cheap = previews["cheap"][-1]
    final = _pixels(result.images[0].image.resize(cheap.size, resample=3))
    error, flat = np.abs(final - _pixels(cheap)).mean(), np.abs(final - final.mean(axis=(0, 1))).mean()
    assert cheap.size == (16, 16) and error < 0.5 * flat, (error, flat)  # measured: 22.0 against 62.1


def test_a_sixteen_channel_latent_and_a_tiny_autoencoder(tiny_folders, tmp_path):
    """SD3's latents have 16 channels; a request that decodes with a tiny autoencoder previews with it ("auto")."""
    from diffusers import AutoencoderTiny

    engine = Engine()
    sd3 = GenerationRequest(prompt="a square", model=str(tiny_folders[Family.SD3]), steps=2, seed=1, width=64, height=64)
    _, previews = _run(engine, sd3, ("cheap",))
    assert previews["cheap"][-1].mode == "RGB" and previews["cheap"][-1].size[0] < 64

    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    latent_channels=4).save_pretrained(tmp_path / "taesd")
    tiny = GenerationRequest(prompt="a square", model=str(tiny_folders[Family.SD1]), steps=2, seed=1, width=64,
                             height=64, tiny_vae=str(tmp_path / "taesd"))
    result, previews = _run(engine, tiny, ("auto",))
    assert np.array_equal(_pixels(previews["auto"][-1]), _pixels(result.images[0].image))


def test_a_taesd_in_vae_approx_previews_its_family_and_cheap_stands_in_without_one(tiny_folders):
    """As A1111 keeps its TAESD decoders in models/VAE-approx: a diffusers AutoencoderTiny folder per family."""
    from diffusers import AutoencoderTiny

    from hayai import paths

    engine = Engine()
    request = GenerationRequest(prompt="a square", model=str(tiny_folders[Family.SD1]), steps=2, seed=1, width=64,
                                height=64)
    _, without = _run(engine, request, ("taesd", "auto"))
    assert without["taesd"][-1].size == without["auto"][-1].size == (8, 8)  # none there: the linear map
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    latent_channels=4).save_pretrained(paths.models_dir() / "VAE-approx" / "taesdxl")
    _, other_family = _run(engine, request, ("taesd",))
    assert other_family["taesd"][-1].size == (8, 8)  # SDXL's latent space is not SD1's
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    latent_channels=4).save_pretrained(paths.models_dir() / "VAE-approx" / "taesd")
    result, found = _run(engine, request, ("taesd", "auto"))
    assert found["taesd"][-1].size == found["auto"][-1].size == (64, 64)
    assert np.array_equal(_pixels(found["taesd"][-1]), _pixels(found["auto"][-1]))


def test_an_unknown_method_is_named(tiny_folders):
    from hayai.generation.preview import StepPreview

    with pytest.raises(ValueError, match="preview method 'NN' is unknown; known: auto, cheap, taesd, full"):
        StepPreview(None, None, (64, 64)).method_for("NN")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_previews_under_every_placement_on_cuda(tiny_folders):
    """Offload moves the VAE's weights through hooks (or leaves them on the meta device): a preview hands the VAE
    its input where the pipeline would, so every placement previews, and none changes the images."""
    from hayai.memory.strategies import candidates

    engine = Engine(device="cuda")
    request = GenerationRequest(prompt="a small red circle", model=str(tiny_folders[Family.SD1]), steps=2, seed=5,
                                width=64, height=64)
    for strategy in candidates(engine.device_spec):
        options = engine.run_options(save=False, strategy=strategy.name)
        plain = engine.generate(request, options)
        previews = []
        watched = engine.generate(request, dataclasses.replace(options, progress=lambda e: previews.append(
            (e.preview.image("cheap"), e.preview.image("full"))) if e.phase == "denoise" else None))
        assert np.array_equal(_pixels(plain.images[0].image), _pixels(watched.images[0].image)), strategy.name
        assert np.abs(_pixels(previews[-1][1]) - _pixels(watched.images[0].image)).max() <= 1, strategy.name
