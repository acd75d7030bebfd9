"""`--model arch:...`: the real architectures with random weights, through the catalog and the engine.

The real SD1.5 is checked on the meta device (shapes and counts, free); the engine's build-on-meta,
materialise-when-placed path runs end to end on a small architecture registered for the test (a real
SD1.5 image at 256 px takes about a minute on a 2-core CPU: benchmarks/harness.py --scenario cpu-sd15).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hayai.errors import ModelNotFoundError
from hayai.generation.engine import Engine
from hayai.generation.request import GenerationRequest
from hayai.models import architectures
from hayai.models.architectures import PUBLISHED_PARAMS, ArchSpec, ModelSpec
from hayai.models.catalog import Catalog
from hayai.models.families import Family
from hayai.store import Store


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_arch_names_resolve_without_files():
    source = Catalog(Store()).resolve("arch:sd15")
    assert (source.kind, source.family, source.name) == ("architecture", Family.SD1, "arch:sd15")
    with pytest.raises(ModelNotFoundError, match="model='arch:sd4' is not a known architecture; choose one of: "
                                                 "arch:sd15, arch:sdxl, arch:sd35m"):
        Catalog(Store()).resolve("arch:sd4")


def test_engine_loads_arch_sd15_on_meta_with_the_published_parameter_counts():
    architectures.build_architecture("sd15")  # imports and first-use caches outside the measurement
    engine = Engine(device="cpu")
    before = _rss_bytes()
    loaded = engine.load("arch:sd15")
    assert _rss_bytes() - before < 300 * 2**20  # 1.07B parameters, and no memory spent on them yet
    assert loaded.native_size == (512, 512) and loaded.family is Family.SD1
    for component in ("unet", "text_encoder", "vae"):
        module = getattr(loaded.pipe, component)
        assert all(p.device.type == "meta" for p in module.parameters())
        count = sum(p.numel() for p in module.parameters())
        published, source = PUBLISHED_PARAMS["sd15", component]
        assert abs(count - published) <= 0.01 * published, (component, count, published, source)


def _small_arch() -> ArchSpec:
    """An SD1-shaped architecture small enough to materialise and run in a second (CLIP's real vocabulary)."""
    clip = dict(vocab_size=49408, max_position_embeddings=77, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                num_hidden_layers=2, hidden_act="quick_gelu", bos_token_id=0, pad_token_id=1, eos_token_id=2)
    unet = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[32, 64],
                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16)
    vae = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
               up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 16, 16, 16], layers_per_block=1,
               norm_num_groups=8, latent_channels=4, sample_size=64, scaling_factor=0.18215)
    return ArchSpec(
        name="small", family=Family.SD1, pipeline_class="StableDiffusionPipeline", source="(test)",
        models={"text_encoder": ModelSpec("transformers", "CLIPTextModel", clip, "CLIPTextConfig"),
                "unet": ModelSpec("diffusers", "UNet2DConditionModel", unet),
                "vae": ModelSpec("diffusers", "AutoencoderKL", vae)},
        tokenizers={"tokenizer": "clip"},
        scheduler=("EulerDiscreteScheduler", dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")),
        pipeline_kwargs=dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False),
    )


def test_an_arch_model_is_materialised_once_where_the_plan_puts_it_and_reproduces(monkeypatch, tmp_path):
    monkeypatch.setitem(architectures.ARCHITECTURES, "small", _small_arch())
    request = GenerationRequest("a red circle", model="arch:small", steps=2, width=64, height=64, seed=5,
                                output_dir=str(tmp_path))
    engine = Engine(device="cpu")
    loaded = engine.load("arch:small")
    assert {p.device.type for p in loaded.pipe.unet.parameters()} == {"meta"}
    result = engine.generate(request)
    assert {(p.device.type, p.dtype) for p in loaded.pipe.unet.parameters()} == {("cpu", torch.float32)}
    assert result.model == "arch:small" and result.strategy == "cpu-float32"
    assert any("random weights" in w and "time and memory are those of the real model" in w for w in result.warnings)

    again = Engine(device="cpu").generate(request)  # another process would build the same weights
    assert np.array_equal(np.asarray(again.images[0].image), np.asarray(result.images[0].image))
    assert again.model_hash == result.model_hash
    reproduced = Engine(device="cpu").reproduce(result.images[0].path)  # the file names arch:small
    assert reproduced.request.model == "arch:small"
    assert np.array_equal(np.asarray(reproduced.images[0].image), np.asarray(result.images[0].image))
