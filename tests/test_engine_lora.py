"""LoRAs through the engine: by flag and by prompt tag, recorded, reproduced, re-weighted without a reload."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hayai.errors import RequestError
from hayai.generation.engine import Engine
from hayai.generation.imagefile import read_image_metadata
from hayai.generation.infotext import parse_infotext
from hayai.generation.request import GenerationRequest
from hayai.lora.catalog import loras_dir
from hayai.lora.synthetic import random_kohya_lora, save_lora
from hayai.models.families import Family
from hayai.models.loading import load_pipeline, source_from_path


@pytest.fixture
def sd1_lora(tiny_folders):
    """A kohya LoRA for the tiny SD1 model, installed in hayai's LoRA folder as 'style'."""
    pipe = load_pipeline(source_from_path(tiny_folders[Family.SD1]))
    return save_lora(random_kohya_lora(pipe, Family.SD1, seed=3, strength=2.0), loras_dir() / "style.safetensors",
                     metadata={"ss_network_dim": "4"})


def _pixels(result):
    return np.asarray(result.images[0].image)


def _request(tiny_folders, tmp_path, **changes):
    return GenerationRequest(**{"prompt": "a red circle", "model": str(tiny_folders[Family.SD1]), "steps": 2,
                                "seed": 8, "sampler": "Euler", "output_dir": str(tmp_path), **changes})


def test_lora_flag_and_prompt_tag_are_the_same_and_change_the_image(sd1_lora, tiny_folders, tmp_path):
    engine = Engine(device="cpu")
    base = engine.generate(_request(tiny_folders, tmp_path))
    flagged = engine.generate(_request(tiny_folders, tmp_path, loras=("style:0.8",)))
    tagged = engine.generate(_request(tiny_folders, tmp_path, prompt="a red circle <lora:style:0.8>"))
    assert not np.array_equal(_pixels(base), _pixels(flagged))
    np.testing.assert_array_equal(_pixels(flagged), _pixels(tagged))
    assert flagged.loras[0]["name"] == "style" and flagged.loras[0]["unet_weight"] == 0.8


def test_weights_change_between_requests_without_reloading(sd1_lora, tiny_folders, tmp_path):
    engine = Engine(device="cpu")
    base = engine.generate(_request(tiny_folders, tmp_path))
    pipe = engine.load(str(tiny_folders[Family.SD1])).pipe
    strong = engine.generate(_request(tiny_folders, tmp_path, loras=("style:1.0",)))
    zero = engine.generate(_request(tiny_folders, tmp_path, loras=("style:0",)))
    again = engine.generate(_request(tiny_folders, tmp_path))
    assert engine.load(str(tiny_folders[Family.SD1])).pipe is pipe  # patched in place, never reloaded
    assert not np.array_equal(_pixels(base), _pixels(strong))
    np.testing.assert_array_equal(_pixels(zero), _pixels(base))  # weight 0 is no LoRA
    np.testing.assert_array_equal(_pixels(again), _pixels(base))  # and removing it restores the base exactly


def test_infotext_records_lora_hashes_and_from_image_reproduces(sd1_lora, tiny_folders, tmp_path):
    made = Engine(device="cpu").generate(_request(tiny_folders, tmp_path / "a", loras=("style:0.6",)))
    info = parse_infotext(read_image_metadata(made.images[0].path).infotext)
    assert info.prompt == "a red circle<lora:style:0.6>"  # A1111 writes flag LoRAs into the prompt
    assert info.params["Lora hashes"] == f"style: {made.loras[0]['short_hash']}"
    again = Engine(device="cpu").reproduce(made.images[0].path, output_dir=str(tmp_path / "b"))
    np.testing.assert_array_equal(_pixels(again), _pixels(made))
    assert again.loras == made.loras


def test_unknown_lora_and_bad_spec_fail_before_anything_runs(tiny_folders, tmp_path):
    from hayai.lora import LoraNotFoundError

    with pytest.raises(RequestError, match="loras"):
        _request(tiny_folders, tmp_path, loras=("style:inf",))
    with pytest.raises(LoraNotFoundError, match="nothere"):
        Engine(device="cpu").generate(_request(tiny_folders, tmp_path, loras=("nothere:1",)))


def test_cli_lora_flag_and_listing(sd1_lora, tiny_folders, tmp_path):
    from tests.test_cli import hayai

    listed = hayai("lora", "list", "--json").stdout
    assert "style" in listed
    result = json.loads(hayai("generate", "a red circle", "-m", tiny_folders[Family.SD1], "--steps", "2", "--seed", "8",
                              "--sampler", "Euler", "--lora", "style:0.8", "-o", tmp_path, "--json").stdout)
    assert result["loras"][0]["name"] == "style"
    api = Engine(device="cpu").generate(_request(tiny_folders, tmp_path / "api", loras=("style:0.8",)))
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(result["images"][0]["path"]).convert("RGB")), _pixels(api))
