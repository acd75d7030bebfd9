"""Write a diffusers pipeline as one single-file checkpoint in the original (Stability/LDM) layout.

This is the reverse of what `from_single_file` reads: the files A1111, ComfyUI and Forge users
download. The denoiser goes under `model.diffusion_model.` (LDM U-Net names for SD1/SDXL, MMDiT
`joint_blocks` for SD3), the VAE under `first_stage_model.`, and the text encoders where each
family's reference code keeps them: `cond_stage_model.transformer.` (SD1),
`conditioner.embedders.0.transformer.` and the OpenCLIP layout under `conditioner.embedders.1.model.`
(SDXL), `text_encoders.{clip_l,clip_g,t5xxl}.transformer.` (SD3).

The U-Net name map is derived from the model's config, not from SD1.5's numbers, so it also names
SDXL modules for kohya LoRAs (`down_blocks.1.attentions.0` -> `input_blocks.4.1`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hayai.errors import ModelError
from hayai.models.families import Family

__all__ = ["original_unet_name", "save_single_file", "single_file_state_dict", "unet_names_to_original"]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

_PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": Family.SD1,
    "StableDiffusionXLPipeline": Family.SDXL,
    "StableDiffusion3Pipeline": Family.SD3,
}

# diffusers ResnetBlock2D layer -> LDM ResBlock layer
_UNET_RESNET_LAYERS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# diffusers ResnetBlock2D layer (no time embedding in a VAE) -> LDM VAE ResnetBlock layer
_VAE_RESNET_LAYERS = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
# diffusers Attention (VAE mid block) layer -> LDM AttnBlock layer (1x1 convolutions there)
_VAE_ATTENTION_LAYERS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

_UNET_DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D")
_UNET_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D")


# --- U-Net names --------------------------------------------------------------------------------


def _per_block(value: int | list[int] | tuple[int, ...], count: int, field: str) -> list[int]:
    if isinstance(value, int):
        return [value] * count
    if len(value) != count:
        raise ModelError(f"unet config {field}={list(value)} does not have one entry per block ({count} blocks)")
    return list(value)


def _add_resnet(names: dict[str, str], diffusers_prefix: str, original_prefix: str) -> None:
    for layer, original in _UNET_RESNET_LAYERS.items():
        names[f"{diffusers_prefix}.{layer}"] = f"{original_prefix}.{original}"


def _check_block_types(config: Mapping[str, Any]) -> None:
    for field, known in (("down_block_types", _UNET_DOWN_BLOCKS), ("up_block_types", _UNET_UP_BLOCKS)):
        for block_type in config[field]:
            if block_type not in known:
                raise ModelError(f"unet config {field} has {block_type!r}; the LDM layout knows {list(known)}")
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid != "UNetMidBlock2DCrossAttn":
        raise ModelError(f"unet config mid_block_type={mid!r}; the LDM layout knows 'UNetMidBlock2DCrossAttn'")


def unet_names_to_original(unet_config: Mapping[str, Any]) -> dict[str, str]:
    """Map diffusers `UNet2DConditionModel` module names to their LDM/SAI names, from the model's config.

    Keys are module paths: every leaf layer outside the transformers (`down_blocks.0.resnets.0.conv1` ->
    `input_blocks.1.0.in_layers.2`) and whole transformer blocks, whose insides keep their names
    (`down_blocks.1.attentions.0` -> `input_blocks.4.1` with layers_per_block=2, as in SD1.5 and SDXL).
    Resnet entries include `conv_shortcut` even where a resnet has none. Use `original_unet_name` to
    rename a parameter or a deeper module path with it.
    """
    _check_block_types(unet_config)
    names = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    if unet_config.get("addition_embed_type") == "text_time":
        names.update({"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"})
    if unet_config.get("class_embed_type") in ("timestep", "projection"):
        names.update({"class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2"})

    down_types = list(unet_config["down_block_types"])
    up_types = list(unet_config["up_block_types"])
    layers = _per_block(unet_config["layers_per_block"], len(down_types), "layers_per_block")

    index = 1  # input_blocks.0 is conv_in
    for i, block_type in enumerate(down_types):
        for j in range(layers[i]):
            _add_resnet(names, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{index}.0")
            if block_type.startswith("CrossAttn"):
                names[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{index}.1"
            index += 1
        if i < len(down_types) - 1:
            names[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1

    _add_resnet(names, "mid_block.resnets.0", "middle_block.0")
    names["mid_block.attentions.0"] = "middle_block.1"
    _add_resnet(names, "mid_block.resnets.1", "middle_block.2")

    index = 0
    for i, (block_type, block_layers) in enumerate(zip(up_types, reversed(layers))):
        has_attention = block_type.startswith("CrossAttn")
        for j in range(block_layers + 1):  # up blocks take one more resnet (the skip from the down path)
            _add_resnet(names, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{index}.0")
            if has_attention:
                names[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{index}.1"
            index += 1
        if i < len(up_types) - 1:
            # the upsampler joins the block's last layer, after its attention when it has one
            names[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{index - 1}.{2 if has_attention else 1}.conv"
    return names


def _rename(name: str, names: Mapping[str, str], what: str) -> str:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in names:
            return names[prefix] + name[len(prefix) :]
    raise ModelError(f"{what} name {name!r} has no counterpart in the original layout")


def original_unet_name(name: str, names: Mapping[str, str]) -> str:
    """The LDM/SAI name of a diffusers U-Net parameter or module path, by its longest mapped prefix.

    `names` is `unet_names_to_original(unet.config)`; e.g.
    `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` -> `input_blocks.4.1.transformer_blocks.0.attn1.to_q`.
    """
    return _rename(name, names, "unet")


# --- VAE ------------------------------------------------------------------------------------------


def _vae_names(vae_config: Mapping[str, Any]) -> dict[str, str]:
    """diffusers AutoencoderKL module names -> LDM names (the decoder's up blocks run in reverse order)."""
    names = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    blocks = len(vae_config["down_block_types"])
    layers = vae_config["layers_per_block"]
    for part in ("encoder", "decoder"):
        names[f"{part}.conv_in"] = f"{part}.conv_in"
        names[f"{part}.conv_out"] = f"{part}.conv_out"
        names[f"{part}.conv_norm_out"] = f"{part}.norm_out"
        for k in range(2):
            for layer, original in _VAE_RESNET_LAYERS.items():
                names[f"{part}.mid_block.resnets.{k}.{layer}"] = f"{part}.mid.block_{k + 1}.{original}"
        for layer, original in _VAE_ATTENTION_LAYERS.items():
            names[f"{part}.mid_block.attentions.0.{layer}"] = f"{part}.mid.attn_1.{original}"
    for i in range(blocks):
        for j in range(layers):
            for layer, original in _VAE_RESNET_LAYERS.items():
                names[f"encoder.down_blocks.{i}.resnets.{j}.{layer}"] = f"encoder.down.{i}.block.{j}.{original}"
        if i < blocks - 1:
            names[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
    for i in range(blocks):
        level = blocks - 1 - i
        for j in range(layers + 1):
            for layer, original in _VAE_RESNET_LAYERS.items():
                names[f"decoder.up_blocks.{i}.resnets.{j}.{layer}"] = f"decoder.up.{level}.block.{j}.{original}"
        if i < blocks - 1:
            names[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{level}.upsample.conv"
    return names


def _vae_state_dict(vae) -> dict[str, Any]:
    names = _vae_names(vae.config)
    out = {}
    for key, tensor in vae.state_dict().items():
        original = _rename(key, names, "vae")
        if ".mid.attn_1." in original and original.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out[VAE_PREFIX + original] = tensor
    return out


# --- text encoders --------------------------------------------------------------------------------


def _clip_state_dict(encoder, prefix: str) -> dict[str, Any]:
    """A transformers CLIP text model in its own (HF) names under `prefix`, always with `text_model.`."""
    out = {}
    for key, tensor in encoder.state_dict().items():
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key  # CLIPTextModel dropped its `text_model` wrapper in transformers 5.6
        out[prefix + key] = tensor
    return out


def _open_clip_state_dict(encoder, prefix: str) -> dict[str, Any]:
    """A transformers `CLIPTextModelWithProjection` in OpenCLIP's layout (SDXL's second text encoder)."""
    import torch

    state = encoder.state_dict()
    out = {
        prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
        # OpenCLIP multiplies `x @ text_projection`; a Linear holds the transpose
        prefix + "text_projection": state["text_projection.weight"].T,
    }
    layer_names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for i in range(encoder.config.num_hidden_layers):
        hf = f"text_model.encoder.layers.{i}."
        oc = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [state[f"{hf}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{oc}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
            for layer, original in layer_names.items():
                out[f"{oc}{original}.{kind}"] = state[f"{hf}{layer}.{kind}"]
    return out


def _prefixed(module, prefix: str) -> dict[str, Any]:
    return {prefix + key: tensor for key, tensor in module.state_dict().items()}


# --- SD3 MMDiT --------------------------------------------------------------------------------------


def _swap_halves(tensor):
    """diffusers' AdaLayerNormContinuous emits (scale, shift); SAI's final modulation emits (shift, scale)."""
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _sd3_transformer_state_dict(transformer) -> dict[str, Any]:
    import torch

    state = transformer.state_dict()
    out = {
        "pos_embed": state["pos_embed.pos_embed"],
        "x_embedder.proj.weight": state["pos_embed.proj.weight"],
        "x_embedder.proj.bias": state["pos_embed.proj.bias"],
        "context_embedder.weight": state["context_embedder.weight"],
        "context_embedder.bias": state["context_embedder.bias"],
        "final_layer.linear.weight": state["proj_out.weight"],
        "final_layer.linear.bias": state["proj_out.bias"],
        "final_layer.adaLN_modulation.1.weight": _swap_halves(state["norm_out.linear.weight"]),
        "final_layer.adaLN_modulation.1.bias": _swap_halves(state["norm_out.linear.bias"]),
    }
    for sai, hf in (("t_embedder", "timestep_embedder"), ("y_embedder", "text_embedder")):
        for kind in ("weight", "bias"):
            out[f"{sai}.mlp.0.{kind}"] = state[f"time_text_embed.{hf}.linear_1.{kind}"]
            out[f"{sai}.mlp.2.{kind}"] = state[f"time_text_embed.{hf}.linear_2.{kind}"]

    last = transformer.config.num_layers - 1
    dual_attention = set(transformer.config.dual_attention_layers)
    for i in range(last + 1):
        hf = f"transformer_blocks.{i}."
        x = f"joint_blocks.{i}.x_block."
        ctx = f"joint_blocks.{i}.context_block."
        for kind in ("weight", "bias"):
            out[f"{x}attn.qkv.{kind}"] = torch.cat([state[f"{hf}attn.to_{p}.{kind}"] for p in "qkv"])
            out[f"{ctx}attn.qkv.{kind}"] = torch.cat([state[f"{hf}attn.add_{p}_proj.{kind}"] for p in "qkv"])
            out[f"{x}attn.proj.{kind}"] = state[f"{hf}attn.to_out.0.{kind}"]
            out[f"{x}adaLN_modulation.1.{kind}"] = state[f"{hf}norm1.linear.{kind}"]
            out[f"{x}mlp.fc1.{kind}"] = state[f"{hf}ff.net.0.proj.{kind}"]
            out[f"{x}mlp.fc2.{kind}"] = state[f"{hf}ff.net.2.{kind}"]
            context_modulation = state[f"{hf}norm1_context.linear.{kind}"]
            if i == last:  # the last context block only feeds attention: (scale, shift) modulation
                out[f"{ctx}adaLN_modulation.1.{kind}"] = _swap_halves(context_modulation)
                continue
            out[f"{ctx}adaLN_modulation.1.{kind}"] = context_modulation
            out[f"{ctx}attn.proj.{kind}"] = state[f"{hf}attn.to_add_out.{kind}"]
            out[f"{ctx}mlp.fc1.{kind}"] = state[f"{hf}ff_context.net.0.proj.{kind}"]
            out[f"{ctx}mlp.fc2.{kind}"] = state[f"{hf}ff_context.net.2.{kind}"]
        if i in dual_attention:  # SD3.5's MMDiT-X: a second self-attention on the image tokens
            for kind in ("weight", "bias"):
                out[f"{x}attn2.qkv.{kind}"] = torch.cat([state[f"{hf}attn2.to_{p}.{kind}"] for p in "qkv"])
                out[f"{x}attn2.proj.{kind}"] = state[f"{hf}attn2.to_out.0.{kind}"]
        if transformer.config.qk_norm:
            norms = [("attn", "attn.norm", x), ("attn", "attn.norm_added", ctx)]
            if i in dual_attention:
                norms.append(("attn2", "attn2.norm", x))
            for sai_attn, hf_norm, block in norms:
                for axis in "qk":
                    out[f"{block}{sai_attn}.ln_{axis}.weight"] = state[f"{hf}{hf_norm}_{axis}.weight"]
    return {UNET_PREFIX + key: tensor for key, tensor in out.items()}


# --- whole pipelines ------------------------------------------------------------------------------


def _pipeline_family(pipe) -> Family:
    class_name = type(pipe).__name__
    base = class_name.replace("Img2Img", "").replace("Inpaint", "")
    family = _PIPELINE_FAMILIES.get(base)
    if family is None:
        supported = sorted(_PIPELINE_FAMILIES)
        raise ModelError(f"pipeline class {class_name!r} cannot be saved as a single file; supported: {supported}")
    if family is Family.SD1 and pipe.unet.config.cross_attention_dim == 1024:
        family = Family.SD2
    return family


def _unet_state_dict(unet) -> dict[str, Any]:
    names = unet_names_to_original(unet.config)
    return {UNET_PREFIX + original_unet_name(key, names): tensor for key, tensor in unet.state_dict().items()}


def single_file_state_dict(pipe) -> dict[str, Any]:
    """The pipeline's denoiser, VAE and text encoders under their original-layout names (tensors as they are)."""
    family = _pipeline_family(pipe)
    if family is Family.SD1:
        parts = [_unet_state_dict(pipe.unet), _clip_state_dict(pipe.text_encoder, "cond_stage_model.transformer.")]
    elif family is Family.SDXL:
        parts = [
            _unet_state_dict(pipe.unet),
            _clip_state_dict(pipe.text_encoder, "conditioner.embedders.0.transformer."),
            _open_clip_state_dict(pipe.text_encoder_2, "conditioner.embedders.1.model."),
        ]
    elif family is Family.SD3:
        parts = [
            _sd3_transformer_state_dict(pipe.transformer),
            _clip_state_dict(pipe.text_encoder, "text_encoders.clip_l.transformer."),
            _clip_state_dict(pipe.text_encoder_2, "text_encoders.clip_g.transformer."),
        ]
        if pipe.text_encoder_3 is not None:
            parts.append(_prefixed(pipe.text_encoder_3, "text_encoders.t5xxl.transformer."))
    else:
        raise ModelError(f"family={family.value!r} cannot be saved as a single file yet; supported: sd1, sdxl, sd3")
    state: dict[str, Any] = {}
    for part in [*parts, _vae_state_dict(pipe.vae)]:
        state.update(part)
    return state


def _storable(state: Mapping[str, Any]) -> dict[str, Any]:
    """Contiguous, detached CPU tensors, each with its own storage (safetensors refuses shared memory)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:  # tied weights (T5's shared/embed_tokens) or a view of a tensor already stored
            tensor = tensor.clone()
            pointer = tensor.untyped_storage().data_ptr()
        seen.add(pointer)
        out[key] = tensor
    return out


def save_single_file(pipe, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write `pipe` (SD1, SDXL or SD3/3.5) as one `.safetensors` checkpoint in the original layout.

    Tensors keep their dtype; `metadata` goes into the safetensors header as given.

    Diffusers' `from_single_file(path, config=<diffusers folder of the same model>)` reads it back
    exactly, except SD3's CLIP-L projection: SAI's reference does not project CLIP-L's pooled output,
    so diffusers loads that text encoder with an identity `text_projection` whatever the file holds.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelError(f"path={str(path)!r} must end in .safetensors")
    state = _storable(single_file_state_dict(pipe))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path
