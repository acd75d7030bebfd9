"""The real architectures: published shapes and parameter counts, free meta builds, usable random weights."""

from __future__ import annotations

import pytest
import torch

from hayai.memory.facts import facts_for_architecture
from hayai.models.architectures import PUBLISHED_PARAMS, build_architecture, build_component


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.mark.parametrize(("arch", "component"), sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_the_published_ones(arch, component):
    published, source = PUBLISHED_PARAMS[arch, component]
    facts = facts_for_architecture(arch).component(component)
    # the published figures count what the checkpoint stores: parameters and buffers (SD3's pos_embed)
    assert abs(facts.params + facts.buffers - published) <= 0.01 * published, source


def test_meta_build_allocates_nothing():
    build_architecture("sd15")  # imports and first-use caches outside the measurement
    before = _rss_bytes()
    pipe = build_architecture("sd35m")  # 7.9B parameters: 31 GB in float32
    grown = _rss_bytes() - before
    assert grown < 300 * 2**20, f"a meta build grew the process by {grown / 2**20:.0f} MiB"
    assert all(p.device.type == "meta" for p in pipe.transformer.parameters())
    assert all(p.device.type == "meta" for p in pipe.text_encoder_3.parameters())


def test_pipelines_have_the_published_structure():
    sd15, sdxl, sd35m = (build_architecture(name) for name in ("sd15", "sdxl", "sd35m"))
    assert type(sd15).__name__ == "StableDiffusionPipeline" and type(sd15.scheduler).__name__ == "PNDMScheduler"
    assert type(sdxl).__name__ == "StableDiffusionXLPipeline" and sdxl.unet.config.cross_attention_dim == 2048
    assert type(sd35m).__name__ == "StableDiffusion3Pipeline"
    assert type(sd35m.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and sd35m.scheduler.config.shift == 3.0
    assert list(sd35m.transformer.config.dual_attention_layers) == list(range(13))
    assert (sd15.vae.config.scaling_factor, sdxl.vae.config.scaling_factor, sd35m.vae.config.scaling_factor) == (0.18215, 0.13025, 1.5305)
    assert sd35m.vae_scale_factor == 8 and sd35m.transformer.config.patch_size == 2


def test_tokenizers_have_the_real_vocabulary_sizes_and_special_ids():
    pipe = build_architecture("sd35m")
    ids = pipe.tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert len(pipe.tokenizer) == 49408 == pipe.text_encoder.config.vocab_size
    assert ids[0] == 49406 and 49407 in ids and len(ids) == 77
    assert pipe.tokenizer_2.pad_token_id == 0  # bigG / CLIP-G pad with "!"
    t5_ids = pipe.tokenizer_3("a photo of a cat").input_ids
    assert len(pipe.tokenizer_3) == 32100 and max(t5_ids) < 32100 and t5_ids[-1] == 1
    assert pipe.text_encoder_3.get_input_embeddings().weight.shape == (32128, 4096)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="name='sd4'"):
        build_architecture("sd4")
    with pytest.raises(ValueError, match="component='transformer'"):
        build_component("sd15", "transformer")


def test_random_weights_are_deterministic_per_seed():
    first = build_component("sd15", "vae", device="cpu", seed=0)
    again = build_component("sd15", "vae", device="cpu", seed=0)
    other = build_component("sd15", "vae", device="cpu", seed=1)
    weight = "decoder.up_blocks.0.resnets.0.conv1.weight"
    assert torch.equal(first.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])
    assert torch.all(first.decoder.conv_norm_out.weight == 1) and torch.all(first.decoder.conv_norm_out.bias == 0)
    std = first.state_dict()[weight].std().item()
    assert std == pytest.approx((512 * 9) ** -0.5, rel=0.05)  # 1/sqrt(fan_in)


def test_sd15_random_weights_give_finite_activations_that_fit_fp16():
    """At real scale N(0, 1) weights overflow fp16 within a few layers; the scaled init keeps every
    intermediate output far below fp16's 65504 (checked in float32: this CPU's fp16 kernels crawl)."""
    unet = build_component("sd15", "unet", device="cpu", seed=0)
    largest = []
    hooks = [m.register_forward_hook(lambda m, i, o: largest.append(o.abs().max().item()) if torch.is_tensor(o) else None)
             for m in unet.modules()]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = unet(torch.randn(1, 4, 16, 16, generator=generator), torch.tensor([999]),
                   torch.randn(1, 77, 768, generator=generator)).sample
    for hook in hooks:
        hook.remove()
    assert torch.isfinite(out).all()
    assert 0.05 < out.std().item() < 20
    assert max(largest) < 1e3, f"an activation reached {max(largest):.3g}"
