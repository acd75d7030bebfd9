"""The training config (YAML, CLI options, defaults from the dataset) and the training memory plan."""

from __future__ import annotations

import inspect

import pytest

from hayai.errors import RequestError
from hayai.hardware import parse_device_spec
from hayai.memory.facts import facts_for_architecture
from hayai.memory.training import TrainingRequest, plan_training
from hayai.models.families import Family
from hayai.training.config import TrainConfig, default_steps, lr_factor


def test_yaml_config_with_relative_dataset_and_yaml_1_1_floats(tmp_path):
    (tmp_path / "cfg.yaml").write_text("dataset: pictures\nlearning_rate: 1e-4\nrank: 8\ntarget_modules: [to_q, to_v]\n")
    config = TrainConfig.from_yaml(tmp_path / "cfg.yaml")
    assert config.dataset == str(tmp_path / "pictures") and config.learning_rate == 1e-4
    assert config.target_modules == ("to_q", "to_v") and config.rank == 8
    assert TrainConfig.from_yaml(tmp_path / "cfg.yaml").replace(rank=4).rank == 4
    again = tmp_path / "again.yaml"
    again.write_text(config.to_yaml())
    assert TrainConfig.from_yaml(again) == config


@pytest.mark.parametrize("data, message", [
    ({"learning_rat": 1e-4}, "unknown field\\(s\\) 'learning_rat' \\(did you mean 'learning_rate'\\?\\)"),
    ({"rank": "16"}, "rank='16' must be an integer"),
    ({"steps": 10, "epochs": 2}, "give one of them"),
    ({"lr_scheduler": "step"}, "lr_scheduler='step' must be one of constant, linear, cosine"),
    ({"output_name": "../x"}, "output_name='../x' must be a file name"),
    ({"caption_dropout": 1.0}, "caption_dropout=1.0 must be at least 0 and below 1"),
    ({"save_formats": ["ckpt"]}, "save_formats=\\('ckpt',\\) must be a list of kohya, diffusers"),
])
def test_bad_fields_are_named(data, message):
    with pytest.raises(RequestError, match=message):
        TrainConfig.from_dict(data)


def test_every_field_is_a_cli_option_with_its_comment():
    from hayai.cli.train import lora

    options = {p.name: p.default for p in inspect.signature(lora).parameters.values() if p.kind is p.KEYWORD_ONLY}
    for name, help_text in TrainConfig.help().items():
        assert options[name].param_decls[0].startswith("--" + name.replace("_", "-")), name
        assert options[name].help.startswith(help_text)


def test_defaults_come_from_the_dataset_size_not_a_fixed_1600():
    assert default_steps(20, 4) == 500  # ~100 views of each image
    assert default_steps(3, 4) == 100 and default_steps(500, 1) == 4000  # within bounds
    assert [round(lr_factor(s, 100, 10, "cosine"), 3) for s in (0, 9, 10, 55, 99)] == [0.091, 0.909, 1.0, 0.5, 0.0]
    assert lr_factor(50, 100, 0, "linear") == 0.5 and lr_factor(99, 100, 0, "constant") == 1.0


def _request(**kw):
    return TrainingRequest(**{"width": 1024, "height": 1024, "lora_params": 3_000_000, "train_images": 40, **kw})


def test_training_plan_for_the_device_at_hand():
    sdxl = facts_for_architecture("sdxl")
    cpu = plan_training(facts_for_architecture("sd15"), _request(width=512, height=512), parse_device_spec("cpu 32GB"))
    assert (cpu.mixed_precision, cpu.optimizer, cpu.cache_latents, cpu.cache_text_embeddings) == ("no", "adamw", True, True)
    big = plan_training(sdxl, _request(), parse_device_spec("RTX 4090 24GB"), bitsandbytes=True)
    assert (big.mixed_precision, big.optimizer, big.gradient_checkpointing, big.batch_size) == ("bf16", "adamw8bit", False, 4)
    small = plan_training(sdxl, _request(), parse_device_spec("RTX 2060 6GB"))
    assert small.mixed_precision == "fp16" and small.optimizer == "adamw"  # no bf16 before Ampere; no bitsandbytes
    assert small.gradient_checkpointing and small.batch_size < 4 and small.fits
    assert small.peak_bytes < plan_training(sdxl, _request(gradient_checkpointing=False, batch_size=small.batch_size),
                                            parse_device_spec("RTX 2060 6GB")).peak_bytes
    shuffled = plan_training(sdxl, _request(captions_vary=True), parse_device_spec("RTX 4090 24GB"))
    assert not shuffled.cache_text_embeddings and "text_encoders" in shuffled.parts
    kept = plan_training(sdxl, _request(mixed_precision="fp16", batch_size=1, cache_latents=False),
                         parse_device_spec("RTX 4090 24GB"))
    assert (kept.mixed_precision, kept.batch_size, kept.cache_latents) == ("fp16", 1, False) and "vae" in kept.parts
    hopeless = plan_training(sdxl, _request(), parse_device_spec("2GB CUDA card"))
    assert not hopeless.fits and "nothing is predicted to fit" in " ".join(hopeless.reasons)


def test_sd3_takes_no_noise_offset(tiny_folders):
    from hayai.training.session import resolve_config

    with pytest.raises(RequestError, match="noise_offset=0.1 applies to noise-prediction models, not sd3"):
        resolve_config(TrainConfig(noise_offset=0.1), family=Family.SD3, native_size=64, plan=None, train=[], validation=[],
                       world=1)
