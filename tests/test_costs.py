"""Model facts and the cost model: counts that must match, and scalings that must hold."""

from __future__ import annotations

import pytest

from hayai.memory import costs
from hayai.memory.facts import facts_for_architecture, facts_from_folder, facts_from_pipeline
from hayai.models.families import Family

GIB = 2**30


@pytest.fixture(scope="module")
def sd15():
    return facts_for_architecture("sd15")


@pytest.fixture(scope="module")
def sdxl():
    return facts_for_architecture("sdxl")


@pytest.fixture(scope="module")
def sd35m():
    return facts_for_architecture("sd35m")


# --- facts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL, Family.SD3])
def test_facts_from_folder_equal_facts_from_the_loaded_pipeline(tiny_folders, family):
    from diffusers import DiffusionPipeline

    folder = tiny_folders[family]
    from_configs = facts_from_folder(folder)
    loaded = facts_from_pipeline(DiffusionPipeline.from_pretrained(folder), family)
    assert from_configs == loaded
    assert from_configs.family == family and from_configs.native_size == 64 and from_configs.vae_scale_factor == 8


def test_facts_describe_the_offload_units(sdxl, sd35m):
    unet = sdxl.component("unet")
    assert unet.role == "denoiser" and [c.name for c in sdxl.by_role("text_encoder")] == ["text_encoder", "text_encoder_2"]
    # block-level offload moves up_blocks[0] (3 x 10 transformer layers at 1280) while conv_in, the embeddings
    # and the mid block stay resident: together most of the UNet
    assert unet.largest_block_params + unet.unblocked_params > 0.6 * unet.params
    assert unet.largest_layer_params < 0.02 * unet.params
    t5 = sd35m.component("text_encoder_3")
    assert t5.largest_layer_params == 32128 * 4096 and t5.hidden_size == 4096  # the (shared) embedding table
    assert sd35m.component("transformer").buffers == 384 * 384 * 1536  # the sin-cos pos_embed table
    with pytest.raises(KeyError, match="name='unet'"):
        sd35m.component("unet")


# --- weights and time ---------------------------------------------------------------------------


def test_weight_bytes_by_dtype():
    assert [costs.weight_bytes(1000, d) for d in ("float32", "float16", "bfloat16", "float8")] == [4000, 2000, 2000, 1000]
    with pytest.raises(ValueError, match="dtype='int3'"):
        costs.weight_bytes(1000, "int3")


def test_transfer_and_compute_seconds():
    assert costs.transfer_seconds(25e9, 25.0) == pytest.approx(1.0)
    assert costs.compute_seconds(1e15, 1000.0, 0.5) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="efficiency=0"):
        costs.compute_seconds(1.0, 1.0, 0)


# --- FLOPs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "size", "reference_tflop"), [("sd15", 512, 1.4), ("sdxl", 1024, 12.0), ("sd35m", 1024, 22.0)])
def test_denoiser_flops_per_cfg_step_match_reference_estimates(arch, size, reference_tflop):
    flops = costs.denoiser_flops(facts_for_architecture(arch), size, size, 2)
    assert flops == pytest.approx(reference_tflop * 1e12, rel=0.2)  # REFERENCE.md §7: estimates +-20%


@pytest.mark.parametrize("family", [Family.SDXL, Family.SD3])
def test_flops_are_proportional_to_the_batch(tiny_folders, family):
    """denoiser_flops counts batch 1 and multiplies: check that against a real count at batch 3."""
    import json

    facts = facts_from_folder(tiny_folders[family])
    model = costs._meta_model(facts.denoiser_class, json.dumps(facts.denoiser_config, sort_keys=True))
    inputs = costs._denoiser_inputs(facts.denoiser_class, facts.denoiser_config, 8, 8, 3, costs._text_tokens(facts))
    counted = costs._count_flops(lambda: model(**inputs, return_dict=False))
    assert costs.denoiser_flops(facts, 64, 64, 3) == pytest.approx(counted, rel=1e-9)
    assert costs.vae_decode_flops(facts, 64, 64, 3) == pytest.approx(3 * costs.vae_decode_flops(facts, 64, 64, 1))


def test_flops_grow_faster_than_pixels_with_attention(sd35m):
    small, large = (costs.denoiser_flops(sd35m, s, s, 2) for s in (512, 1024))
    assert large > 4.4 * small  # 4x the pixels; self-attention over 4x the tokens costs 16x


def test_vae_decode_flops_and_tiles(sd15):
    full = costs.vae_decode_flops(sd15, 1024, 1024, 1)
    assert full == pytest.approx(4 * costs.vae_decode_flops(sd15, 512, 512, 1), rel=0.05)
    assert costs.vae_tiles(sd15, 512, 512) == [(64, 64)]  # no larger than a tile: decoded whole
    assert len(costs.vae_tiles(sd15, 1024, 1024)) == 9  # 64-latent tiles every 48: rows at 0, 48, 96
    assert costs.vae_decode_flops(sd15, 1024, 1024, 1, tiled=True) > 1.2 * full  # the overlaps are decoded twice


def test_vae_tiles_are_the_ones_diffusers_decodes(tiny_folders):
    import torch
    from diffusers import AutoencoderKL

    folder = tiny_folders[Family.SD1]
    facts = facts_from_folder(folder)
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = 32, 4
    shapes = []
    vae.decoder.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        vae.decode(torch.zeros(1, 4, 16, 12))
    assert shapes == costs.vae_tiles(facts, 96, 128, tile_size=32)


def test_sizes_must_fit_the_model(sd35m):
    with pytest.raises(ValueError, match="width=1000"):
        costs.denoiser_flops(sd35m, 1000, 1024, 1)  # SD3: multiples of 16 (VAE 8 x patch 2)
    with pytest.raises(ValueError, match="batch=0"):
        costs.denoiser_activation_bytes(sd35m, 1024, 1024, 0, "float16")


# --- activations --------------------------------------------------------------------------------


def test_math_attention_scores_dominate_sdxl_at_1024(sdxl):
    sdpa = costs.denoiser_activation_bytes(sdxl, 1024, 1024, 2, "float16", "sdpa")
    math = costs.denoiser_activation_bytes(sdxl, 1024, 1024, 2, "float16", "math")
    assert math > 2 * sdpa  # the N^2 scores (10 heads x 4096^2 at level 1, x2 images) outweigh the rest
    small_sdpa = costs.denoiser_activation_bytes(sdxl, 512, 512, 2, "float16", "sdpa")
    small_math = costs.denoiser_activation_bytes(sdxl, 512, 512, 2, "float16", "math")
    assert (math - sdpa) / (small_math - small_sdpa) > 10  # quadratic in pixels, not linear
    with pytest.raises(ValueError, match="attention='flash'"):
        costs.denoiser_activation_bytes(sdxl, 1024, 1024, 2, "float16", "flash")


def test_denoiser_activations_scale_with_batch_and_pixels(sd15, sd35m):
    one = costs.denoiser_activation_bytes(sd15, 512, 512, 1, "float16")
    assert costs.denoiser_activation_bytes(sd15, 512, 512, 2, "float16") == pytest.approx(2 * one, rel=0.01)
    assert costs.denoiser_activation_bytes(sd15, 1024, 1024, 1, "float16") == pytest.approx(4 * one, rel=0.05)
    assert costs.denoiser_activation_bytes(sd35m, 1024, 1024, 1, "float32") == 2 * costs.denoiser_activation_bytes(
        sd35m, 1024, 1024, 1, "float16")


def test_tiled_vae_decode_is_bounded_while_full_decode_grows_with_pixels(sdxl):
    full = [costs.vae_decode_activation_bytes(sdxl, s, s, 1, "float32") for s in (1024, 2048, 4096)]
    tiled = [costs.vae_decode_activation_bytes(sdxl, s, s, 1, "float32", tiled=True, tile_size=512) for s in (1024, 2048, 4096)]
    assert full[1] == pytest.approx(4 * full[0], rel=0.05) and full[2] == pytest.approx(4 * full[1], rel=0.05)
    assert tiled[2] - tiled[1] < 0.1 * (full[2] - full[1])  # only the 3-channel decoded tiles and image grow
    assert full[0] > 2 * GIB > tiled[2]  # a 1024 px fp32 decode needs > 2 GiB; tiles of 512 px even at 4096 do not
    # at its native size SDXL's default tile (1024 px) is the whole image: enable_tiling() saves nothing there
    assert costs.vae_decode_activation_bytes(sdxl, 1024, 1024, 1, "float32", tiled=True) == full[0]


def test_sliced_vae_decode_works_one_image_at_a_time(sd15):
    batch4 = costs.vae_decode_activation_bytes(sd15, 512, 512, 4, "float16")
    sliced = costs.vae_decode_activation_bytes(sd15, 512, 512, 4, "float16", sliced=True)
    assert sliced < 0.3 * batch4
    assert sliced > costs.vae_decode_activation_bytes(sd15, 512, 512, 1, "float16")  # the 4 outputs are kept


def test_text_encoding_is_small_next_to_the_encoders(sd35m):
    activations = costs.text_encode_activation_bytes(sd35m, 1, "float16")
    assert 10 * 2**20 < activations < 0.05 * costs.weight_bytes(sd35m.component("text_encoder_3").params, "float16")
    assert costs.text_encode_flops(sd35m, 2) == pytest.approx(2 * costs.text_encode_flops(sd35m, 1))
