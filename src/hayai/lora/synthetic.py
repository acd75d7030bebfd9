"""Random LoRA files for a loaded pipeline: the fake backend for LoRA tests and demos.

`random_kohya_lora` builds a kohya-format state dict (as A1111 and ComfyUI users download them) whose
layers target what kohya's sd-scripts targets: the attention and feed-forward layers of the denoiser's
transformer blocks (SD1's 1x1-conv projections included; SD3 in SAI names with fused qkv, the
modulations and the embedders) and of the text encoders (CLIP; T5 for SD3). `to_peft` rewrites a
diffusers-format dict for one component in PEFT's own naming. Values are random but reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path

from hayai.lora.convert import ModuleIndex, _sd3_sai_names
from hayai.models.families import Family
from hayai.models.single_file import original_unet_name, unet_names_to_original

__all__ = ["KOHYA_PREFIXES", "random_kohya_lora", "save_lora", "to_peft"]

KOHYA_PREFIXES = {
    Family.SD1: {"unet": "lora_unet", "text_encoder": "lora_te"},
    Family.SD2: {"unet": "lora_unet", "text_encoder": "lora_te"},
    Family.SDXL: {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"},
    Family.SD3: {"transformer": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2", "text_encoder_3": "lora_te3"},
}
_SD3_EXTRA = ("context_embedder", "final_layer_adaLN_modulation_1")  # an embedder and a swapped modulation


def _kohya_layers(index: ModuleIndex, component: str) -> dict[str, tuple[tuple[int, ...], int]]:
    """kohya name (no prefix) -> (update shape (out, in, *kernel), rank cap) for the layers kohya trains."""
    import torch

    root = index.components[component]
    out: dict[str, tuple[tuple[int, ...], int]] = {}
    if component == "transformer":
        for name, targets in _sd3_sai_names(root).items():
            if name.startswith("joint_blocks") or name in _SD3_EXTRA:
                weight = index.weight(targets[0])
                rows = sum((t.rows[1] - t.rows[0]) if t.rows else weight.shape[0] for t in targets)
                out[name] = ((rows, *weight.shape[1:]), min(rows, weight.shape[1]))
        return out
    original = unet_names_to_original(root.config) if component == "unet" and index.family is Family.SDXL else None
    for path, module in root.named_modules():
        if component == "unet":
            wanted = ".attentions." in path and (
                isinstance(module, torch.nn.Linear) or (isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1))
            )
        else:
            wanted = isinstance(module, torch.nn.Linear) and (".layers." in path or ".block." in path)
        if not wanted:
            continue
        if original is not None:
            name = original_unet_name(path, original)
        elif "CLIPText" in type(root).__name__ and not path.startswith("text_model."):
            name = "text_model." + path
        else:
            name = path
        shape = tuple(module.weight.shape)
        out[name.replace(".", "_")] = (shape, min(shape[0], shape[1]))
    return out


def random_kohya_lora(
    pipe,
    family: Family,
    *,
    rank: int = 4,
    alpha: float | None = 2.0,
    seed: int = 0,
    strength: float = 0.5,
    components: tuple[str, ...] | None = None,
) -> dict:
    """A kohya-format LoRA state dict for `pipe` (CPU float32 tensors; `alpha` None writes no alpha keys).

    `components` limits it to some of "unet"/"transformer", "text_encoder", "text_encoder_2",
    "text_encoder_3" (default: all the pipeline has). `strength` sets the size of the update
    relative to the layer's own weights (about `strength * alpha / rank`).
    """
    import torch

    family = Family(family)
    index = ModuleIndex(pipe, family)
    generator = torch.Generator().manual_seed(seed)
    prefixes = KOHYA_PREFIXES[family]
    state: dict = {}
    for component, prefix in prefixes.items():
        if component not in index.components or (components is not None and component not in components):
            continue
        for name, (shape, cap) in sorted(_kohya_layers(index, component).items()):
            r = min(rank, cap)
            kernel = tuple(shape[2:])
            down = torch.randn((r, shape[1], *kernel), generator=generator) / (shape[1] * max(1, len(kernel))) ** 0.5
            up = torch.randn((shape[0], r, *([1] * len(kernel))), generator=generator) * strength / r**0.5
            key = f"{prefix}_{name}"
            state[f"{key}.lora_down.weight"] = down
            state[f"{key}.lora_up.weight"] = up
            if alpha is not None:
                state[f"{key}.alpha"] = torch.tensor(float(alpha))
    return state


def save_lora(state: dict, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a LoRA state dict as .safetensors (contiguous CPU tensors, metadata as given)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def to_peft(diffusers_state: dict, component: str, metadata: dict[str, str] | None = None) -> tuple[dict, dict]:
    """One component of a diffusers-format dict in PEFT naming, and its `adapter_config.json` content."""
    prefix = component + "."
    tensors = {
        "base_model.model." + key[len(prefix) :]: value
        for key, value in diffusers_state.items()
        if key.startswith(prefix) and (key.endswith(".lora_A.weight") or key.endswith(".lora_B.weight"))
    }
    packed = json.loads((metadata or {}).get("lora_adapter_metadata", "{}"))
    config = {key[len(prefix) :]: value for key, value in packed.items() if key.startswith(prefix)}
    config.setdefault("peft_type", "LORA")
    return tensors, config
