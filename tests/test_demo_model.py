"""The shipped demo model: a small SD1 diffusers folder that runs through the engine and follows prompts."""

from __future__ import annotations

import json

import pytest

from hayai.demo import BUILTIN_MODEL
from hayai.demo.adherence import evaluate, score
from hayai.demo.architecture import demo_tokenizer
from hayai.generation.engine import Engine
from hayai.generation.request import GenerationRequest
from hayai.models.families import Family, detect_family_from_folder

if not (BUILTIN_MODEL / "model_index.json").is_file():
    pytest.skip("the demo model is not trained and shipped yet (issue 4): these are its acceptance tests",
                allow_module_level=True)

# the bar the issue sets for the shipped model at its default settings
THRESHOLDS = {"colour": 0.90, "shape": 0.80, "position": 0.80}
README_PROMPT = "a small red circle at the top left on a white background"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """One engine for the module (the model loads once), on the CPU so the pixels are the reference ones."""
    from hayai.store import Store

    return Engine(store=Store(tmp_path_factory.mktemp("demo-model") / "hayai.db"), device="cpu")


def test_shipped_folder_is_a_small_sd1_diffusers_model():
    files = [p for p in BUILTIN_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 25 * 10**6
    weights = sorted(p.relative_to(BUILTIN_MODEL).as_posix() for p in files if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt"))
    assert weights == [
        "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
    ]
    assert detect_family_from_folder(BUILTIN_MODEL) is Family.SD1
    facts = json.loads((BUILTIN_MODEL / "hayai_model.json").read_text())
    assert facts["recommended"] == {
        "steps": 20, "cfg_scale": 2.0, "sampler": "DPM++ 2M", "schedule_type": "Karras", "width": 64, "height": 64,
    }
    assert facts["adherence"]["cfg_scale"] == 7.0  # the figures below were measured at CFG 7
    assert facts["training"]["command"].startswith("python scripts/train_demo_model.py")


def test_shipped_tokenizer_is_the_code_s_tokenizer():
    from transformers import CLIPTokenizer

    shipped = CLIPTokenizer.from_pretrained(BUILTIN_MODEL / "tokenizer")
    assert shipped.get_vocab() == demo_tokenizer().get_vocab()
    assert shipped.model_max_length == 77
    assert shipped(README_PROMPT).input_ids == demo_tokenizer()(README_PROMPT).input_ids


def test_readme_command_draws_what_it_says(engine):
    """`hayai generate "<README prompt>" --steps 20 --seed 42` at the engine's defaults: the model card's."""
    result = engine.generate(GenerationRequest(README_PROMPT, model=str(BUILTIN_MODEL), steps=20, seed=42), save=False)
    assert (result.request.sampler, result.request.schedule_type, result.request.cfg_scale) == ("DPM++ 2M", "Karras", 2.0)
    image = result.images[0].image
    assert image.size == (64, 64)
    assert score(image, README_PROMPT) == {
        "size": True, "colour": True, "shape": True, "position": True, "background": True,
    }


def test_words_outside_the_vocabulary_are_tokenized_and_drawn(engine):
    prompt = "a large blue square in the center on a black background, fluffy, 8k, trending on artstation"
    tokenizer = engine.load(str(BUILTIN_MODEL)).pipe.tokenizer
    ids = tokenizer(prompt).input_ids
    assert tokenizer.eos_token_id not in ids[1:-1]  # no unknown-token ids
    assert len(ids) > len(tokenizer(prompt.split(",")[0]).input_ids) + 10  # the unknown words became byte pieces
    result = engine.generate(GenerationRequest(prompt, model=str(BUILTIN_MODEL), steps=20, seed=3), save=False)
    assert result.images[0].image.size == (64, 64)
    assert score(result.images[0].image, prompt)["colour"]


@pytest.fixture(scope="module")
def report(engine):
    """The issue's measurement: 60 fixed prompts x 2 seeds = 120 images at 20 steps, CFG 7, DPM++ 2M Karras."""
    report = evaluate(str(BUILTIN_MODEL), engine=engine)
    assert report.images >= 100
    assert (report.steps, report.cfg_scale, report.sampler, report.schedule_type) == (20, 7.0, "DPM++ 2M", "Karras")
    return report


# what the shipped model measured (hayai_model.json) less 5 points: a change to sampling, prompt encoding or
# the engine that makes it draw worse fails here
FLOORS = {"colour": 0.87, "shape": 0.80, "size": 0.92, "position": 0.95, "background": 0.95}


@pytest.mark.slow
def test_shipped_model_keeps_its_measured_adherence(report):
    facts = json.loads((BUILTIN_MODEL / "hayai_model.json").read_text())
    assert report.accuracy == pytest.approx(facts["adherence"]["accuracy"], abs=0.05)  # the README's figures hold
    for attribute, floor in FLOORS.items():
        assert report.accuracy[attribute] >= floor, (attribute, report.accuracy, report.failures[:10])


@pytest.mark.slow
def test_shipped_model_meets_the_issue_bar(report):
    """Issue 4's bar: colour >= 90%, shape >= 80%, position >= 80% at the default settings, >= 100 images."""
    for attribute, bar in THRESHOLDS.items():
        assert report.accuracy[attribute] >= bar, (attribute, report.accuracy)


def test_training_is_reproducible_and_resumable(tmp_path):
    """A tiny run of the real training script, straight through and in slices, gives the same weights."""
    from safetensors.torch import load_file

    from hayai.demo.train import Paused, TrainConfig, train

    def config(name: str, **extra) -> TrainConfig:
        return TrainConfig(
            out=str(tmp_path / name / "model"), work_dir=str(tmp_path / name / "work"), vae_steps=3, vae_batch=4,
            pool_size=8, unet_steps=3, unet_batch=2, warmup_steps=1, log_every=2, checkpoint_every=100,
            eval_every=0, final_eval=False, **extra,
        )

    straight = train(config("straight"))
    slices = 0
    while True:
        slices += 1
        try:
            sliced = train(config("sliced", stop_after_steps=2))
            break
        except Paused:
            assert slices < 5
    assert slices == 3  # vae 2 | vae 1 + unet 1 | unet 2
    for part in ("vae/diffusion_pytorch_model", "unet/diffusion_pytorch_model", "text_encoder/model"):
        a, b = load_file(straight / f"{part}.safetensors"), load_file(sliced / f"{part}.safetensors")
        assert a.keys() == b.keys()
        assert all((a[k] == b[k]).all() for k in a), part
    losses = lambda folder: [row.split("\t")[:3] for row in (folder.parent / "work" / "loss.tsv").read_text().splitlines()]  # noqa: E731
    assert losses(straight) == losses(sliced)
    facts = json.loads((straight / "hayai_model.json").read_text())
    assert facts["training"]["config"]["unet_steps"] == 3
    assert "out" not in facts["training"]["config"]  # the recipe is recorded, not where the run kept its files


@pytest.mark.slow
def test_shipped_autoencoder_keeps_the_shapes():
    """The ceiling under every generated image: a scene encoded and decoded still reads back as itself.

    A 1,500-step autoencoder kept 94% of the shapes (small ones on grey came back round); the shipped
    3,000-step one keeps 98.8% of 600 scenes.
    """
    import numpy as np
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    from hayai.demo.shapes import all_scenes, render

    vae = AutoencoderKL.from_pretrained(BUILTIN_MODEL / "vae").eval()
    scenes = all_scenes()
    picked = np.random.default_rng(5).choice(len(scenes), 200, replace=False)
    kept = {attribute: 0 for attribute in ("colour", "shape", "size", "position", "background")}
    for index in picked:
        scene = scenes[index]
        image = render(scene, np.random.default_rng(int(index)))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        decoded = Image.fromarray(((y[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))
        for attribute, ok in score(decoded, scene.caption).items():
            kept[attribute] += ok
    assert kept["shape"] / len(picked) >= 0.97, kept
    assert all(count / len(picked) >= 0.99 for attribute, count in kept.items() if attribute != "shape"), kept
