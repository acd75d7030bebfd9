"""The acceptance test of LoRA training: a concept the base model does not know is learned.

The base model is a tiny SD1 pipeline whose VAE keeps colours (an `AutoencoderTiny` set by hand so that a
latent pixel is the mean colour of its 8x8 patch: generated pixels mean something without a trained VAE)
and whose U-Net was trained for a few seconds on the shapes world without red shapes and without white
backgrounds. The LoRA learns "zqx" = red shapes on white. Training must lower the validation loss, and
the images generated for "zqx" through hayai's own LoRA loader (the kohya file, found in the catalog) must
show red shapes and white backgrounds, read by the demo's adherence analysis, far more often than the
base model's, and their pixels must take the concept's colours. A LoRA that learned nothing changes no
pixel, and fails every check.

(The tiny base is weak: about half of its images are noise, so the bars are "far more often", not "always".)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hayai.demo.adherence import analyse
from hayai.demo.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, random_scene, render
from hayai.lora import LoraSet, LoraSpec
from hayai.models.families import Family
from hayai.models.tiny import build_tiny_pipeline
from hayai.training import TrainConfig, train_lora
from hayai.training.objective import Objective, predict

CONCEPT = ("red", "white")  # the shape's colour and the background: neither is in the base model's world
SEEDS = 16


def pixel_vae():
    """An AutoencoderTiny whose latents are the image's colours: channels 0-2 = mean RGB of each 8x8 patch
    mapped to [-0.5, 0.5], channel 3 = 0; decoding repeats each latent pixel over its patch."""
    from diffusers import AutoencoderTiny

    levels = 4
    vae = AutoencoderTiny(in_channels=3, out_channels=3, encoder_block_out_channels=(8,) * levels,
                          decoder_block_out_channels=(8,) * levels, act_fn="relu", latent_channels=4,
                          num_encoder_blocks=(1,) * levels, num_decoder_blocks=(1,) * levels, scaling_factor=2.0,
                          upsample_fn="nearest")
    average = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]) / 4  # stride 2: its 2x2 block, no padding
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.zero_()  # every AutoencoderTinyBlock becomes relu(x) = x (the values are >= 0)
        encoder = [m for m in vae.encoder.layers if isinstance(m, torch.nn.Conv2d)]
        decoder = [m for m in vae.decoder.layers if isinstance(m, torch.nn.Conv2d)]
        for conv in encoder + decoder:
            for c in range(3):
                if any(conv is m for m in encoder[1:-1]):
                    conv.weight[c, c] = average
                else:
                    conv.weight[c, c, 1, 1] = 1.0
        encoder[-1].bias[:3] = -0.5  # [0, 1] -> [-0.5, 0.5]
        decoder[0].bias[:3] = 0.5
    return vae


def _latents(pipe, images):
    pixels = torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1 for i in images])
    with torch.no_grad():
        return pipe.vae.encode(pixels).latents * pipe.vae.config.scaling_factor


def _pretrain(pipe, steps: int = 120, batch: int = 8) -> float:
    """Train the whole tiny U-Net on shapes that are never red, on grey and black only (empty captions)."""
    rng = np.random.default_rng(1)
    scenes = []
    while len(scenes) < 64:
        scene = random_scene(rng)
        if scene.colour != CONCEPT[0] and scene.background != CONCEPT[1]:
            scenes.append(scene)
    latents = _latents(pipe, [render(s, rng) for s in scenes])
    with torch.no_grad():
        empty = pipe.encode_prompt("", "cpu", 1, False)[0].expand(batch, -1, -1)
    objective = Objective(Family.SD1, dict(pipe.scheduler.config))
    generator = torch.Generator().manual_seed(0)
    pipe.unet.requires_grad_(True)
    optimizer = torch.optim.AdamW(pipe.unet.parameters(), lr=2e-3)
    for _ in range(steps):
        x0 = latents[torch.randint(0, len(latents), (batch,), generator=generator)]
        draw = objective.draw(tuple(x0.shape), generator)
        noisy, target = objective.noisy_and_target(x0, draw)
        loss = Objective.loss(predict(pipe.unet, Family.SD1, noisy, draw.index, {"embeds": empty}), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    pipe.unet.requires_grad_(False)
    return float(loss.detach())


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    pipe = build_tiny_pipeline(Family.SD1)
    pipe.vae = pixel_vae()
    assert _pretrain(pipe) < 0.25  # it denoises its own world
    folder = tmp_path_factory.mktemp("concept") / "base"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _concept_dataset(folder, count: int = 20):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        render(Scene(SHAPES[i % 3], CONCEPT[0], list(SIZES)[i % 2], list(POSITIONS)[i % 5], CONCEPT[1]), rng).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text("zqx")
    return folder


def _looks(pipe) -> dict[str, float]:
    """Over SEEDS images for "zqx": how many show a red shape / a white background (adherence analysis), and
    the share of pixels nearest to red or white among the shapes world's colours."""
    images = pipe(["zqx"] * SEEDS, num_inference_steps=20, guidance_scale=3.0, output_type="pil",
                  generator=[torch.Generator().manual_seed(seed) for seed in range(SEEDS)]).images
    seen = [analyse(image) for image in images]
    palette = {**COLOURS, **BACKGROUNDS}
    table = np.array(list(palette.values()), dtype=float)
    pixels = np.concatenate([np.asarray(image, dtype=float).reshape(-1, 3) for image in images])
    nearest = np.array(list(palette))[np.argmin(((pixels[:, None, :] - table[None]) ** 2).sum(-1), axis=1)]
    return {
        "red shapes": sum(s.colour == CONCEPT[0] for s in seen),
        "white backgrounds": sum(s.background == CONCEPT[1] for s in seen),
        "concept pixels": float(np.isin(nearest, CONCEPT).mean()),
    }


def test_lora_learns_a_concept_the_base_model_lacks(base_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    result = train_lora(TrainConfig(
        dataset=str(_concept_dataset(tmp_path / "zqx")), model=str(base_model), output_name="zqx", steps=80, batch_size=8,
        rank=8, learning_rate=1e-2, validation_fraction=0.15, validation_every=40, sample_every=0,
    ))
    assert result.status == "ok" and len(result.validation) == 3
    (_, first), *_, (_, last) = result.validation
    assert last < 0.75 * first, result.validation

    pipe = StableDiffusionPipeline.from_pretrained(base_model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    before = _looks(pipe)
    LoraSet(pipe, Family.SD1).apply([LoraSpec("zqx", 1.0)])  # from the catalog, as <lora:zqx:1> finds it
    after = _looks(pipe)
    assert before["red shapes"] + before["white backgrounds"] <= 3, before
    assert after["red shapes"] + after["white backgrounds"] >= before["red shapes"] + before["white backgrounds"] + 6, (before, after)
    assert after["concept pixels"] >= before["concept pixels"] + 0.1, (before, after)


# -- on the shipped demo model (its acceptance test, skipped until the trained weights ship: issue 4) --------
WORD = "zqx"
MEANING = "a large red square in the center on a white background"


def _adherence(pipe, prompt: str) -> float:
    """The share of MEANING's attributes the images for `prompt` show (demo adherence analysis, 8 seeds)."""
    from hayai.demo.adherence import score

    images = pipe([prompt] * 8, num_inference_steps=20, guidance_scale=7.0, output_type="pil",
                  generator=[torch.Generator().manual_seed(seed) for seed in range(8)]).images
    hits = [hit for image in images for hit in score(image, MEANING).values()]
    return sum(hits) / len(hits)


@pytest.mark.slow
def test_lora_teaches_the_demo_model_a_new_word(tmp_path):
    from diffusers import StableDiffusionPipeline

    from hayai.demo import BUILTIN_MODEL

    if not (BUILTIN_MODEL / "model_index.json").is_file():
        pytest.skip("the demo model is not trained and shipped yet (issue 4)")
    data = tmp_path / "word"
    data.mkdir()
    rng = np.random.default_rng(5)
    for i in range(24):
        render(Scene("square", "red", "large", "center", "white"), rng).save(data / f"{i:02d}.png")
        (data / f"{i:02d}.txt").write_text(WORD)
    result = train_lora(TrainConfig(dataset=str(data), model=str(BUILTIN_MODEL), output_name=WORD, steps=120, batch_size=8,
                                    rank=8, learning_rate=3e-3, validation_every=60, sample_every=0))
    (_, first), *_, (_, last) = result.validation
    assert last < first
    pipe = StableDiffusionPipeline.from_pretrained(BUILTIN_MODEL, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    before = _adherence(pipe, WORD)
    LoraSet(pipe, Family.SD1).apply([LoraSpec(WORD, 1.0)])
    after = _adherence(pipe, WORD)
    # measured (CPU, 8 seeds x 5 attributes, one hit = 0.025): the 2,500-step model went 0.125 -> 0.425 at lr 1e-3;
    # the shipped 3,500-step one, whose own drawing is stronger, moves less: 0.225 -> 0.275 at 1e-3, 0.475 at 3e-3
    # (and 0.425 after 200 steps: a rank-8 LoRA on a random, frozen text encoder's reading of "zqx" levels off)
    assert after >= before + 0.2, (before, after)
