"""Model families and how to tell them apart without loading any weights.

A family decides which pipeline class runs a model, which samplers apply (noise prediction vs flow
matching), which sizes are valid and which infotext keys mean something. It is read from a diffusers
folder's `model_index.json` (plus the UNet config to split SD1 from SD2), or from the tensor names and
shapes in a single-file checkpoint's header, so detection of a 7 GB file reads a few kilobytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from hayai.errors import ModelError

__all__ = ["Family", "FamilyInfo", "FAMILY_INFO", "detect_family_from_folder", "detect_family_from_keys"]


class Family(str, Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SD3 = "sd3"
    FLUX = "flux"


@dataclass(frozen=True)
class FamilyInfo:
    pipeline_class: str  # diffusers text-to-image pipeline
    flow_matching: bool  # flow-matching models take their own sampler
    size_multiple: int  # width/height must be a multiple of this (VAE factor x patch size)
    native_size: int  # the resolution the family was trained at (default width/height)
    clip_skip: bool  # whether clip skip applies


FAMILY_INFO: dict[Family, FamilyInfo] = {
    Family.SD1: FamilyInfo("StableDiffusionPipeline", False, 8, 512, True),
    Family.SD2: FamilyInfo("StableDiffusionPipeline", False, 8, 768, True),
    Family.SDXL: FamilyInfo("StableDiffusionXLPipeline", False, 8, 1024, True),
    Family.SD3: FamilyInfo("StableDiffusion3Pipeline", True, 16, 1024, False),
    Family.FLUX: FamilyInfo("FluxPipeline", True, 16, 1024, False),
}

_PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": Family.SD1,  # SD2 is split off by its UNet's cross-attention width
    "StableDiffusionXLPipeline": Family.SDXL,
    "StableDiffusion3Pipeline": Family.SD3,
    "FluxPipeline": Family.FLUX,
}


def detect_family_from_folder(folder: Path) -> Family:
    """The family of a diffusers folder, from `model_index.json` (and `unet/config.json` for SD1/SD2)."""
    index_path = Path(folder) / "model_index.json"
    if not index_path.is_file():
        raise ModelError(f"{folder} is not a diffusers model folder: it has no model_index.json")
    index = _read_json(index_path)
    class_name = index.get("_class_name", "")
    # img2img / inpaint variants share the family of their text-to-image pipeline
    base = class_name.replace("Img2Img", "").replace("Inpaint", "")
    family = _PIPELINE_FAMILIES.get(base)
    if family is None:
        known = ", ".join(sorted(_PIPELINE_FAMILIES))
        raise ModelError(f"{folder}: pipeline class {class_name!r} is not supported; hayai runs {known}")
    if family is Family.SD1:
        unet_config = Path(folder) / "unet" / "config.json"
        if unet_config.is_file() and _read_json(unet_config).get("cross_attention_dim") == 1024:
            family = Family.SD2
    return family


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{path} is incomplete or not JSON: the model folder is damaged; download it again") from None


_ADAPTER_MARKERS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".alpha", ".hada_", ".lokr_")


def detect_family_from_keys(shapes: dict[str, tuple[int, ...]]) -> Family:
    """The family of a single-file checkpoint from its tensor names and shapes (original layouts).

    The markers are those of the reference implementations: SD3's MMDiT `joint_blocks`, Flux's
    `double_blocks`, SDXL's `label_emb` (size/crop conditioning) and second text encoder under
    `conditioner.embedders.1`, and SD2's OpenCLIP text encoder with 1024-wide cross-attention.
    """
    keys = shapes.keys()
    if any(marker in key or key.endswith(marker.rstrip(".")) for key in keys for marker in _ADAPTER_MARKERS):
        raise ModelError("this file holds LoRA/adapter weights, not a model checkpoint: use it as a LoRA")

    def has(fragment: str) -> bool:
        return any(fragment in key for key in keys)

    if has("joint_blocks.0."):
        return Family.SD3
    if has("double_blocks.0.") and has("single_blocks.0."):
        return Family.FLUX
    if has("model.diffusion_model.label_emb.") or has("conditioner.embedders.1."):
        return Family.SDXL
    if has("model.diffusion_model.input_blocks."):
        context = [
            shape[-1]
            for key, shape in shapes.items()
            if key.startswith("model.diffusion_model.") and key.endswith("attn2.to_k.weight")
        ]
        if (context and context[0] == 1024) or has("cond_stage_model.model.transformer."):
            return Family.SD2
        return Family.SD1
    raise ModelError(
        "could not tell the model family from the checkpoint's keys: it is not an SD1/SD2/SDXL/SD3/Flux "
        "single-file checkpoint in the original layout (a LoRA or VAE file, perhaps?)"
    )
