"""Writing a trained LoRA network as files every tool loads.

- kohya format (`<name>.safetensors`, what A1111, ComfyUI and kohya-ss write and read; diffusers'
  `load_lora_weights` converts it for SD1/SDXL): `<prefix>_<name>.lora_down.weight` / `.lora_up.weight`
  / `.alpha`, names as hayai's LoRA loader reads them (`hayai.lora.convert`): diffusers paths for SD1/SD2,
  LDM/SAI names for the SDXL U-Net, SAI MMDiT names for SD3, where q, k and v share one fused `qkv`
  layer: their updates become one block-diagonal update of rank 3r (exact: alpha is scaled with it).
  The header carries kohya's `ss_*` training metadata, `modelspec.*` and `sshs_model_hash`.
- diffusers format (`pytorch_lora_weights.safetensors` in a folder, as `save_lora_weights` writes it):
  `<component>.<path>.lora_A.weight` / `.lora_B.weight` (PEFT's names) with each component's LoraConfig
  (r, lora_alpha, target_modules) in the `lora_adapter_metadata` header entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from hayai.lora.convert import _sd3_sai_names, diffusers_lora_metadata
from hayai.lora.synthetic import KOHYA_PREFIXES
from hayai.models.families import Family
from hayai.models.single_file import original_unet_name, unet_names_to_original
from hayai.training.lora_layers import LoraNetwork, LoraTarget

__all__ = ["DIFFUSERS_FILE", "BASE_MODEL_VERSION", "diffusers_state", "kohya_state", "save_diffusers", "save_kohya",
           "ss_metadata"]

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
# kohya's ss_base_model_version and the modelspec architecture, per family
BASE_MODEL_VERSION = {Family.SD1: "sd_v1", Family.SD2: "sd_v2", Family.SDXL: "sdxl_base_v1-0", Family.SD3: "sd3"}
_MODELSPEC = {Family.SD1: "stable-diffusion-v1", Family.SD2: "stable-diffusion-v2", Family.SDXL: "stable-diffusion-xl-v1-base",
              Family.SD3: "stable-diffusion-3-medium"}


@dataclass
class _Fused:
    """Parts of one kohya layer: (target, down, up, scale) per diffusers layer it stands for."""

    key: str
    rows: list  # [(row range or None, swap_halves, target, down, up, scale)]
    out: int


def _raw(network: LoraNetwork, target: LoraTarget) -> tuple[torch.Tensor, torch.Tensor, float]:
    layer = network.layers[target.key]
    down = layer.down.weight.detach().to("cpu", torch.float32).contiguous()
    up = layer.up.weight.detach().to("cpu", torch.float32).contiguous()
    return down, up, layer.scale


def _text_name(pipe, target: LoraTarget) -> str:
    root = getattr(pipe, target.component)
    clip = "CLIPText" in type(root).__name__
    return ("text_model." + target.path) if clip and not target.path.startswith("text_model.") else target.path


def kohya_state(network: LoraNetwork, pipe, family: Family) -> dict[str, torch.Tensor]:
    """The network as a kohya state dict (float32 CPU tensors)."""
    family = Family(family)
    prefixes = KOHYA_PREFIXES[family]
    state: dict[str, torch.Tensor] = {}
    fused: dict[str, _Fused] = {}
    sai = None
    if family is Family.SD3:
        sai = {}
        for name, targets in _sd3_sai_names(pipe.transformer).items():
            for target in targets:
                sai[target.module] = (name, target, targets)
    original = unet_names_to_original(pipe.unet.config) if family is Family.SDXL else None
    for target in network.targets:
        down, up, scale = _raw(network, target)
        prefix = prefixes[target.component]
        if target.component.startswith("text_encoder"):
            key = f"{prefix}_{_text_name(pipe, target).replace('.', '_')}"
        elif sai is not None:
            name, sai_target, siblings = sai[target.path]
            if sai_target.rows or sai_target.swap_halves or len(siblings) > 1:
                entry = fused.setdefault(name, _Fused(f"{prefix}_{name}", [], sum(
                    (t.rows[1] - t.rows[0]) if t.rows else up.shape[0] for t in siblings)))
                entry.rows.append((sai_target.rows, sai_target.swap_halves, down, up, scale))
                continue
            key = f"{prefix}_{name}"
        elif original is not None:
            key = f"{prefix}_{original_unet_name(target.path, original).replace('.', '_')}"
        else:
            key = f"{prefix}_{target.path.replace('.', '_')}"
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        state[f"{key}.alpha"] = torch.tensor(scale * down.shape[0])
    for entry in fused.values():
        scale = entry.rows[0][4]
        rank = sum(part[2].shape[0] for part in entry.rows)
        down = torch.cat([part[2] for part in entry.rows], dim=0)
        up = torch.zeros((entry.out, rank, *entry.rows[0][3].shape[2:]))
        column = 0
        for rows, swap, part_down, part_up, part_scale in entry.rows:
            part_up = part_up * (part_scale / scale)  # 1.0 when every part has the same alpha / rank
            if swap:  # SAI orders modulations (shift, scale), diffusers (scale, shift)
                first, second = part_up.chunk(2, dim=0)
                part_up = torch.cat([second, first], dim=0)
            start, stop = rows if rows else (0, entry.out)
            up[start:stop, column : column + part_down.shape[0]] = part_up
            column += part_down.shape[0]
        state[f"{entry.key}.lora_down.weight"] = down
        state[f"{entry.key}.lora_up.weight"] = up
        state[f"{entry.key}.alpha"] = torch.tensor(scale * rank)
    return state


def diffusers_state(network: LoraNetwork) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The network in diffusers' `pytorch_lora_weights` naming, and the header metadata with its configs."""
    tensors: dict[str, torch.Tensor] = {}
    configs: dict[str, dict] = {}
    for target in network.targets:
        down, up, scale = _raw(network, target)
        name = f"{target.component}.{target.path}"
        tensors[f"{name}.lora_A.weight"] = down
        tensors[f"{name}.lora_B.weight"] = up
        config = configs.setdefault(target.component, {"ranks": {}, "alphas": {}})
        config["ranks"][target.path] = down.shape[0]
        config["alphas"][target.path] = scale * down.shape[0]
    return tensors, diffusers_lora_metadata(configs)


def _write(tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    """Write atomically: a temporary file renamed over the target."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata=metadata)
    partial.replace(path)


def save_kohya(path: Path, network: LoraNetwork, pipe, family: Family, metadata: dict[str, str]) -> Path:
    """Write the kohya file with `metadata` plus `sshs_model_hash` (the tensor-data hash A1111 shows)."""
    from hayai.lora.formats import lora_hashes

    path = Path(path)
    state = kohya_state(network, pipe, family)
    _write(state, path, metadata)
    _, data_hash = lora_hashes(path)  # the header is not hashed, so adding the hash to it keeps it true
    _write(state, path, {**metadata, "sshs_model_hash": data_hash})
    return path


def save_diffusers(folder: Path, network: LoraNetwork) -> Path:
    tensors, metadata = diffusers_state(network)
    path = Path(folder) / DIFFUSERS_FILE
    _write(tensors, path, metadata)
    return path


def ss_metadata(config: dict, *, family: Family, model_name: str, model_hash: str, train_images: int, reg_images: int = 0,
                batches_per_epoch: int, epochs: int, epoch: int, step: int, tag_frequency: dict, dataset_dirs: dict,
                started_at: str, finished_at: str | None, session_id: str, network_dim: int,
                network_alpha: float) -> dict[str, str]:
    """kohya's `ss_*` training metadata and `modelspec.*` for the file's header (all values strings)."""
    family = Family(family)
    resolution = config["resolution"]
    values = {
        "ss_session_id": session_id,
        "ss_training_started_at": started_at,
        "ss_training_finished_at": finished_at,
        "ss_output_name": config["output_name"],
        "ss_sd_model_name": model_name,
        "ss_new_sd_model_hash": model_hash,
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_v2": family is Family.SD2,
        "ss_network_module": "networks.lora",
        "ss_network_dim": network_dim,
        "ss_network_alpha": network_alpha,
        "ss_network_dropout": config["dropout"],
        "ss_network_args": json.dumps({"target_modules": config["target_modules"]}),
        "ss_learning_rate": config["learning_rate"],
        "ss_unet_lr": config["learning_rate"],
        "ss_text_encoder_lr": config["text_encoder_lr"] if config["train_text_encoder"] else None,
        "ss_network_train_unet_only": not config["train_text_encoder"],
        "ss_lr_scheduler": config["lr_scheduler"],
        "ss_lr_warmup_steps": config["warmup_steps"],
        "ss_optimizer": {"adamw": "torch.optim.AdamW", "adamw8bit": "bitsandbytes.optim.AdamW8bit"}[config["optimizer"]]
                        + f"(weight_decay={config['weight_decay']})",
        "ss_max_grad_norm": config["max_grad_norm"],
        "ss_seed": config["seed"],
        "ss_num_train_images": train_images,
        "ss_num_reg_images": reg_images,
        "ss_num_batches_per_epoch": batches_per_epoch,
        "ss_num_epochs": epochs,
        "ss_epoch": epoch,
        "ss_steps": step,
        "ss_max_train_steps": config["steps"],
        "ss_batch_size_per_device": config["batch_size"],
        "ss_total_batch_size": config["batch_size"] * config["gradient_accumulation"],
        "ss_gradient_accumulation_steps": config["gradient_accumulation"],
        "ss_gradient_checkpointing": config["gradient_checkpointing"],
        "ss_mixed_precision": config["mixed_precision"],
        "ss_full_fp16": False,
        "ss_cache_latents": config["cache_latents"],
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_enable_bucket": config["buckets"],
        "ss_min_bucket_reso": resolution // 2,
        "ss_max_bucket_reso": resolution * 2,
        "ss_noise_offset": config["noise_offset"] or None,
        "ss_min_snr_gamma": config["min_snr_gamma"] or None,
        "ss_shuffle_caption": config["caption_shuffle"],
        "ss_keep_tokens": config["keep_tokens"],
        "ss_caption_dropout_rate": config["caption_dropout"],
        "ss_clip_skip": None,
        "ss_tag_frequency": json.dumps(tag_frequency, ensure_ascii=False),
        "ss_dataset_dirs": json.dumps(dataset_dirs, ensure_ascii=False),
        "ss_training_comment": "trained with hayai",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{_MODELSPEC[family]}/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": config["output_name"],
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.date": (finished_at or started_at)[:10],
    }
    if config.get("trigger_word"):
        values["modelspec.trigger_phrase"] = config["trigger_word"]
    return {key: "None" if value is None else str(value) for key, value in values.items()}
