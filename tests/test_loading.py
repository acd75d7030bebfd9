"""Loading real model sources through the engine: single-file checkpoints and their configs."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from hayai.errors import ModelError
from hayai.generation.engine import Engine
from hayai.generation.request import GenerationRequest
from hayai.models.families import Family
from hayai.models.loading import load_pipeline, source_from_path
from hayai.models.single_file import save_single_file


@pytest.fixture(scope="module")
def sd1_single_file(tiny_folders, tmp_path_factory):
    """The tiny SD1 pipeline as an A1111-style checkpoint, and a diffusers folder of its configs only."""
    root = tmp_path_factory.mktemp("single")
    checkpoint = save_single_file(load_pipeline(source_from_path(tiny_folders[Family.SD1])), root / "tiny-sd1.safetensors")
    configs = root / "tiny-sd1-configs"
    shutil.copytree(tiny_folders[Family.SD1], configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return checkpoint, configs


def test_single_file_generates_like_its_diffusers_folder(sd1_single_file, tiny_folders, tmp_path):
    checkpoint, configs = sd1_single_file
    request = GenerationRequest(prompt="a red circle", steps=3, seed=21, sampler="Euler", output_dir=str(tmp_path))
    from_file = Engine().generate(GenerationRequest(**{**request.to_dict(), "model": str(checkpoint),
                                                       "model_config": str(configs)}))
    from_folder = Engine().generate(GenerationRequest(**{**request.to_dict(), "model": str(tiny_folders[Family.SD1])}))
    assert from_file.family is Family.SD1 and from_file.model == "tiny-sd1"
    assert from_file.model_hash == hashlib.sha256(checkpoint.read_bytes()).hexdigest()  # A1111: first 10 = Model hash
    assert f"Model hash: {from_file.model_hash[:10]}" in from_file.images[0].infotext
    ours = np.asarray(from_file.images[0].image, dtype=np.int16)
    theirs = np.asarray(from_folder.images[0].image, dtype=np.int16)
    # the same weights; reading them from an unaligned safetensors buffer may move a float's last bit
    assert np.abs(ours - theirs).max() <= 1


def test_single_file_without_configs_says_how_to_get_them(sd1_single_file):
    checkpoint, _ = sd1_single_file
    with pytest.raises(ModelError) as error:
        Engine().load(str(checkpoint))
    message = str(error.value)
    assert "needs the pipeline's component configs" in message
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in message and "--model-config" in message


def test_model_config_must_be_a_diffusers_folder(sd1_single_file, tmp_path):
    checkpoint, _ = sd1_single_file
    with pytest.raises(ModelError, match="is not a diffusers folder"):
        Engine().load(str(checkpoint), model_config=str(tmp_path))
