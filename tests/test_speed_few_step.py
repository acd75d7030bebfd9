"""Few-step LoRAs and models: recognised from metadata or name, configured, and a warning when overridden."""

from __future__ import annotations

import dataclasses
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
    ("sd_xl_turbo_lora_v1.safetensors", "Turbo", 4, 1.0, "Euler a", "SGM Uniform"),
    ("sdxl_lightning.safetensors", "Lightning", 4, 1.0, "Euler", "SGM Uniform"),
    ("lightning_8steps.safetensors", "Lightning", 8, 1.0, "Euler", "SGM Uniform"),
], ids=lambda v: v if isinstance(v, str) and "/" not in v else None)
def test_names_are_recognised(name, method, steps, cfg, sampler, schedule):
    found = detect(name)
    assert (found.method, found.steps, found.cfg_scale, found.sampler, found.schedule_type) == (
        method, steps, cfg, sampler, schedule)


@pytest.mark.parametrize("name", ["add_detail.safetensors", "lcmstyle.safetensors", "hayai-shapes", "arch:sd15",
                                  "/loras/style/pytorch_lora_weights.safetensors",
                                  # style LoRAs whose names hold the ordinary words, unqualified
                                  "lightning_bolts_v2.safetensors", "LightningStyle.safetensors",
                                  "turbo_car_sdxl.safetensors", "TurboEngine.safetensors"])
def test_other_names_are_not(name):
    assert detect(name) is None


@pytest.mark.parametrize("name, method", [
    ("juggernautXL_v9Rdphoto2Lightning.safetensors", "Lightning"),
    ("dreamshaperXL_turboDPMSDE.safetensors", "Turbo"),
    ("RealVisXL_V4.0_Lightning.safetensors", "Lightning"),
    ("dreamshaper_8LCM.safetensors", "LCM"),
])
def test_a_checkpoint_name_needs_only_the_word(name, method):
    """Merged checkpoints carry the distillation's name, often in camelCase."""
    found = detect(name, kind="model")
    assert (found.method, found.kind) == (method, "model")


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


def test_a_flux_few_step_lora_keeps_the_models_guidance(tmp_path):
    """Flux's cfg_scale is its distilled guidance: FLUX.1-Turbo-Alpha wants 8 steps at the model's 3.5, not CFG 1."""
    from hayai.speed.few_step import for_flow_matching

    turbo = for_flow_matching(detect("FLUX.1-Turbo-Alpha.safetensors"), Family.FLUX)
    assert (turbo.steps, turbo.sampler, turbo.cfg_scale) == (8, "Euler", None)
    assert turbo.recommended == {"steps": 8, "sampler": "Euler", "schedule_type": "Simple"}
    request = GenerationRequest(prompt="x").resolve(Family.FLUX, (64, 64), recommended={"cfg_scale": 3.5})
    assert turbo.warnings(dataclasses.replace(request, steps=8)) == []
    hyper = for_flow_matching(detect("Hyper-FLUX.1-dev-16steps-lora.safetensors"), Family.FLUX)
    assert (hyper.method, hyper.steps, hyper.cfg_scale) == ("Hyper-SD", 16, None)


# -- the fast preset: a few-step LoRA of the model from the catalog ------------------------------------------
def _few_step_lora(tiny_folders, name, metadata):
    pipe = load_pipeline(source_from_path(tiny_folders[Family.SD1]))
    return save_lora(random_kohya_lora(pipe, Family.SD1, seed=7, strength=0.5), loras_dir() / f"{name}.safetensors",
                     metadata=metadata)


def _model_hash(tiny_folders):
    from hayai.models.catalog import source_hash
    from hayai.store import Store

    with Store() as store:
        return source_hash(store, source_from_path(tiny_folders[Family.SD1]))


def test_fast_without_a_few_step_lora_says_how_to_make_one(tiny_folders):
    from hayai.errors import RequestError

    with pytest.raises(RequestError, match="hayai train distill --model"):
        Engine(device="cpu").generate(GenerationRequest("a red circle", model=str(tiny_folders[Family.SD1]), speed="fast"),
                                      save=False)


def test_fast_uses_the_lora_distilled_from_this_model_and_the_image_reproduces_it(tiny_folders, tmp_path):
    _few_step_lora(tiny_folders, "other-lcm", {METADATA_KEY: json.dumps({"method": "LCM", "steps": 4, "model_hash": "0" * 64}),
                                               "modelspec.architecture": "stable-diffusion-v1/lora"})
    _few_step_lora(tiny_folders, "mine-lcm", {METADATA_KEY: json.dumps({"method": "LCM", "steps": 3,
                                                                        "model_hash": _model_hash(tiny_folders)})})
    engine = Engine(device="cpu")
    result = engine.generate(GenerationRequest("a red circle", model=str(tiny_folders[Family.SD1]), speed="fast", seed=4,
                                               output_dir=str(tmp_path)))
    resolved = result.request
    assert resolved.loras == ("mine-lcm:1",)  # distilled from this model, not the other one
    assert (resolved.steps, resolved.sampler, resolved.cfg_scale, resolved.step_cache) == (3, "LCM", 1.0, 0)
    again, _, _ = engine.request_from_image(result.images[0].path)
    assert again.loras == ("mine-lcm:1",) and again.speed == "fast"
    rerun = engine.generate(again, save=False)
    assert rerun.request.loras == ("mine-lcm:1",)  # not added twice
    assert list(rerun.images[0].image.getdata()) == list(result.images[0].image.getdata())


def test_fast_takes_a_family_few_step_lora_and_skips_other_families():
    from pathlib import Path

    from hayai.lora.catalog import LoraEntry
    from hayai.speed.few_step import for_model

    def entry(name, metadata):
        return LoraEntry(name, Path(f"/loras/{name}.safetensors"), Path("/loras"), 1, metadata=metadata)

    entries = [entry("style", {"modelspec.architecture": "stable-diffusion-v1/lora"}),
               entry("sdxl_lightning_4step_lora", {"ss_base_model_version": "sdxl_base_v1-0"}),
               entry("lcm-lora-sdv1-5", {"modelspec.architecture": "stable-diffusion-v1/lora"})]
    asked = []
    chosen, method = for_model(Family.SD1, lambda: asked.append(1), entries)
    assert chosen.name == "lcm-lora-sdv1-5" and method.method == "LCM" and not asked  # no hash needed
    assert for_model(Family.SDXL, lambda: "x", entries)[0].name == "sdxl_lightning_4step_lora"
    assert for_model(Family.SD3, lambda: "x", entries) is None
