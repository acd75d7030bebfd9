"""Trained LoRAs as files: kohya (A1111/ComfyUI, diffusers' load_lora_weights) and diffusers/PEFT format.

The reference is the live network (LoRA layers hooked into the pipeline, as during training): a file must
give its images, through hayai's loader and through diffusers' own `load_lora_weights`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hayai.lora import LoraSet, LoraSpec, read_lora_file
from hayai.models.families import Family
from hayai.models.tiny import build_tiny_pipeline
from hayai.training.export import DIFFUSERS_FILE, save_diffusers, save_kohya
from hayai.training.lora_layers import LoraNetwork


def _image(pipe):
    return pipe("a red cat", negative_prompt="blurry", num_inference_steps=2, guidance_scale=5.0, width=64, height=64,
                generator=torch.Generator().manual_seed(0), output_type="np").images


def _trained_network(pipe, family, *, text_encoders=True):
    """A network as training leaves it: non-zero up and down matrices (here random), alpha != rank."""
    network = LoraNetwork.for_pipeline(pipe, family, rank=4, alpha=2.0, text_encoders=text_encoders)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return network


def _live(family, **kwargs):
    pipe = build_tiny_pipeline(family)
    base = _image(pipe)
    network = _trained_network(pipe, family, **kwargs)
    network.attach(pipe)
    image = _image(pipe)
    network.detach()
    assert not np.allclose(image, base, atol=1e-2)  # the LoRA does something
    return pipe, network, image


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL], ids=lambda f: f.value)
def test_kohya_file_gives_the_training_images_in_hayai_and_in_diffusers(tmp_path, family):
    pipe, network, live = _live(family)
    path = save_kohya(tmp_path / "trained.safetensors", network, pipe, family, {"ss_network_dim": "4"})
    lora = read_lora_file(path)
    assert lora.format == "kohya" and lora.metadata["ss_network_dim"] == "4" and len(lora.metadata["sshs_model_hash"]) == 64
    prefixes = {key.split("_")[1] for key in lora.tensors}
    assert prefixes == ({"unet", "te"} if family is Family.SD1 else {"unet", "te1", "te2"})

    ours = build_tiny_pipeline(family)
    applied = LoraSet(ours, family, lambda name: path).apply([LoraSpec("trained", 1.0)])
    assert applied[0].unmatched == () and applied[0].layers == len(network.targets)
    hayai_image = _image(ours)
    assert np.abs(hayai_image - live).max() < 1e-4  # patched weights vs hooks: float rounding only

    reference = build_tiny_pipeline(family)
    reference.load_lora_weights(str(path), adapter_name="trained")
    reference.fuse_lora(adapter_names=["trained"])
    assert np.array_equal(_image(reference), hayai_image)


@pytest.mark.parametrize("family", [Family.SD1, Family.SD3], ids=lambda f: f.value)
def test_diffusers_format_loads_in_diffusers(tmp_path, family):
    pipe, network, live = _live(family, text_encoders=family is Family.SD1)
    folder = tmp_path / "diffusers"
    save_diffusers(folder, network)
    assert (folder / DIFFUSERS_FILE).is_file()
    reference = build_tiny_pipeline(family)
    reference.load_lora_weights(str(folder), adapter_name="trained")
    assert np.abs(_image(reference) - live).max() < 1e-4


def test_sd3_kohya_file_fuses_qkv_as_sai_names_it(tmp_path):
    """kohya SD3 files name the MMDiT's layers SAI's way, with one fused qkv: q, k and v become one
    block-diagonal update of rank 3r (alpha 3x), which hayai's loader splits back exactly."""
    pipe, network, live = _live(Family.SD3, text_encoders=False)
    path = save_kohya(tmp_path / "sd3.safetensors", network, pipe, Family.SD3, {})
    tensors = read_lora_file(path).tensors
    assert tensors["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"].shape[0] == 12
    assert float(tensors["lora_unet_joint_blocks_0_x_block_attn_qkv.alpha"]) == 6.0
    assert "lora_unet_joint_blocks_1_context_block_attn_qkv.lora_up.weight" in tensors
    ours = build_tiny_pipeline(Family.SD3)
    applied = LoraSet(ours, Family.SD3, lambda name: path).apply([LoraSpec("sd3", 1.0)])
    assert applied[0].modules == len(network.targets)
    assert np.abs(_image(ours) - live).max() < 1e-4
