"""Few-step LoRAs and models: recognised from metadata or name, configured, and a warning when overridden."""

from __future__ import annotations

import json

import pytest

from hayai.generation.engine import Engine
from hayai.generation.request import GenerationRequest
from hayai.lora.catalog import loras_dir
from hayai.lora.synthetic import random_kohya_lora, save_lora
from hayai.models.families import Family
from hayai.models.loading import load_pipeline, source_from_path
from hayai.speed.few_step import METADATA_KEY, detect, detect_file


@pytest.mark.parametrize("name, method, steps, cfg, sampler, schedule", [
    ("lcm-lora-sdv1-5.safetensors", "LCM", 4, 1.0, "LCM", "Uniform"),
    ("/loras/lcm-lora-sdv1-5/pytorch_lora_weights.safetensors", "LCM", 4, 1.0, "LCM", "Uniform"),
    ("TCD-SD15-LoRA.safetensors", "TCD", 4, 1.0, "TCD", "Uniform"),
    ("Hyper-SD15-8steps-lora.safetensors", "Hyper-SD", 8, 1.0, "DDIM", "SGM Uniform"),
    ("Hyper-SD15-12steps-CFG-lora.safetensors", "Hyper-SD", 12, 6.0, "DDIM", "SGM Uniform"),
    ("Hyper-SD15-1step-lora.safetensors", "Hyper-SD", 1, 1.0, "TCD", "SGM Uniform"),
    ("sdxl_lightning_2step_lora.safetensors", "Lightning", 2, 1.0, "Euler", "SGM Uniform"),
    ("/models/sd-turbo", "Turbo", 4, 1.0, "Euler a", "SGM Uniform"),
], ids=lambda v: v if isinstance(v, str) and "/" not in v else None)
def test_names_are_recognised(name, method, steps, cfg, sampler, schedule):
    found = detect(name)
    assert (found.method, found.steps, found.cfg_scale, found.sampler, found.schedule_type) == (
        method, steps, cfg, sampler, schedule)


@pytest.mark.parametrize("name", ["add_detail.safetensors", "lcmstyle.safetensors", "hayai-shapes", "arch:sd15",
                                  "/loras/style/pytorch_lora_weights.safetensors"])
def test_other_names_are_not(name):
    assert detect(name) is None


def test_kohya_metadata_is_read_before_the_name():
    found = detect("renamed.safetensors", {"ss_output_name": "sdxl_lightning_8step_lora"})
    assert (found.method, found.steps) == ("Lightning", 8)
    assert found.source == "renamed.safetensors (metadata ss_output_name)"
    own = detect("lcm.safetensors", {METADATA_KEY: json.dumps({"method": "LCM", "steps": 6, "cfg_scale": 1.5})})
    assert (own.method, own.steps, own.cfg_scale) == ("LCM", 6, 1.5)


@pytest.fixture
def lcm_lora(tiny_folders):
    """A LoRA for the tiny SD1 model whose only sign of being LCM is its kohya metadata."""
    pipe = load_pipeline(source_from_path(tiny_folders[Family.SD1]))
    return save_lora(random_kohya_lora(pipe, Family.SD1, seed=5, strength=0.5), loras_dir() / "fastlora.safetensors",
                     metadata={"ss_output_name": "lcm_lora_sd15", "ss_network_dim": "4"})


def test_lora_file_metadata_is_detected(lcm_lora):
    found = detect_file(lcm_lora)
    assert found.method == "LCM" and found.source == "fastlora.safetensors (metadata ss_output_name)"


def test_a_few_step_lora_sets_sampler_steps_and_cfg(lcm_lora, tiny_folders, tmp_path):
    request = GenerationRequest(prompt="a red circle", model=str(tiny_folders[Family.SD1]), seed=2,
                                loras=("fastlora",), output_dir=str(tmp_path))
    result = Engine(device="cpu").generate(request, save=False)
    resolved = result.request
    assert (resolved.sampler, resolved.steps, resolved.cfg_scale, resolved.schedule_type) == ("LCM", 4, 1.0, "Uniform")
    assert not [w for w in result.warnings if "few-step" in w]
    # the prompt tag is the same LoRA
    tagged = Engine(device="cpu").generate(
        GenerationRequest(prompt="a red circle <lora:fastlora:1>", model=str(tiny_folders[Family.SD1]), seed=2),
        save=False)
    assert (tagged.request.sampler, tagged.request.steps) == ("LCM", 4)


def test_overriding_into_a_breaking_range_warns(lcm_lora, tiny_folders, tmp_path):
    request = GenerationRequest(prompt="a red circle", model=str(tiny_folders[Family.SD1]), seed=2, steps=3,
                                cfg_scale=7.0, sampler="Euler", loras=("fastlora",), step_cache=2)
    result = Engine(device="cpu").generate(request, save=False)
    assert (result.request.steps, result.request.cfg_scale, result.request.sampler) == (3, 7.0, "Euler")  # as asked
    few = [w for w in result.warnings if "is a LCM few-step LoRA" in w]
    assert len(few) == 3
    assert "cfg_scale=7 is outside 1-2" in few[0] and "sampler 'Euler'" in few[1] and "step caching" in few[2]


def test_tcd_is_a_sampler():
    resolved = GenerationRequest(prompt="x", sampler="TCD").resolve(Family.SD1, (64, 64))
    assert (resolved.sampler, resolved.schedule_type) == ("TCD", "Uniform")


def test_a_turbo_flow_model_gets_the_flow_sampler(tmp_path):
    from hayai.models.loading import ModelSource
    from hayai.speed.few_step import for_request

    source = ModelSource("folder", tmp_path / "stable-diffusion-3.5-large-turbo", Family.SD3,
                         "stable-diffusion-3.5-large-turbo")
    found = for_request(GenerationRequest(prompt="x"), source, find_lora=None)
    assert (found.method, found.kind, found.sampler, found.schedule_type, found.steps) == ("Turbo", "model", "Euler",
                                                                                           "Simple", 4)
    resolved = GenerationRequest(prompt="x").resolve(Family.SD3, (64, 64), recommended=found.recommended)
    assert (resolved.sampler, resolved.cfg_scale) == ("Euler", 1.0)
