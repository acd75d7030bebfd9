"""Single-file checkpoints: tiny pipelines written in the original layout and read back by diffusers.

The round trip goes through diffusers' real loader, `from_single_file(path, config=<diffusers
folder>, local_files_only=True)`, with the network cut off. The config folder holds configs and
tokenizers only (weights deleted), so every weight that comes back must have come from the file.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from hayai.errors import ModelError
from hayai.models.families import Family, detect_family_from_keys
from hayai.models.single_file import (
    original_unet_name,
    save_single_file,
    single_file_state_dict,
    unet_names_to_original,
)
from hayai.models.tiny import build_tiny_pipeline

FAMILIES = (Family.SD1, Family.SDXL, Family.SD3)

# A few names per family that a reader of the original layout (A1111, ComfyUI, diffusers) looks for.
MARKERS = {
    Family.SD1: [
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.1.1.conv.weight",  # UpBlock2D: the upsampler follows the resnet
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
    ],
    Family.SDXL: [
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.input_blocks.3.1.transformer_blocks.1.attn1.to_q.weight",
        "model.diffusion_model.output_blocks.1.2.conv.weight",  # after the attention of a CrossAttnUpBlock2D
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.text_projection",
    ],
    Family.SD3: [
        "model.diffusion_model.pos_embed",
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
        "model.diffusion_model.joint_blocks.1.context_block.adaLN_modulation.1.weight",
        "model.diffusion_model.final_layer.linear.weight",
        "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight",
        "text_encoders.clip_g.transformer.text_projection.weight",
        "text_encoders.t5xxl.transformer.shared.weight",
    ],
}
PREFIXES = {
    Family.SD1: ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."),
    Family.SDXL: (
        "model.diffusion_model.",
        "first_stage_model.",
        "conditioner.embedders.0.transformer.text_model.",
        "conditioner.embedders.1.model.",
    ),
    Family.SD3: ("model.diffusion_model.", "first_stage_model.", "text_encoders."),
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("a single-file test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _config_folder(pipe, folder: Path) -> Path:
    """A diffusers folder with every config and tokenizer of `pipe` but none of its weights."""
    pipe.save_pretrained(folder)
    for weights in [*folder.rglob("*.safetensors"), *folder.rglob("*.bin")]:
        weights.unlink()
    return folder


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def _second_text_encoder_from_file(family: Family, pipe, path: Path):
    """The second text encoder, read from the file with diffusers' converter for its layout.

    diffusers' pipeline loader tells CLIP-L from OpenCLIP-bigG / CLIP-G by width alone (768 vs 1280 in
    the real models). The tiny pipelines give both encoders the same width, so the pipeline loader
    would fill `text_encoder_2` with CLIP-L's weights; only then is this needed.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from safetensors.torch import load_file

    checkpoint = load_file(str(path))
    model = type(pipe.text_encoder_2)(pipe.text_encoder_2.config)
    if family is Family.SDXL:
        state = convert_open_clip_checkpoint(model, checkpoint, prefix="conditioner.embedders.1.model.")
    else:
        state = convert_ldm_clip_checkpoint(checkpoint, "text_encoders.clip_g.transformer.")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _load(family: Family, pipe, path: Path, folder: Path):
    kwargs = {}
    if family is not Family.SD1 and pipe.text_encoder.config.hidden_size == pipe.text_encoder_2.config.hidden_size:
        kwargs["text_encoder_2"] = _second_text_encoder_from_file(family, pipe, path)
    loaded = type(pipe).from_single_file(str(path), config=str(folder), local_files_only=True, **kwargs)
    loaded.set_progress_bar_config(disable=True)
    return loaded


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda f: f.value)
def round_trip(request, tmp_path_factory):
    family = request.param
    pipe = build_tiny_pipeline(family, seed=0)
    if family is Family.SD3:
        # SD3 files carry CLIP-L without a usable projection: SAI's reference pools CLIP-L unprojected,
        # and diffusers loads it with an identity `text_projection`. Give the original the same.
        with torch.no_grad():
            pipe.text_encoder.text_projection.weight.copy_(torch.eye(pipe.text_encoder.config.hidden_size))
    root = tmp_path_factory.mktemp(family.value)
    folder = _config_folder(pipe, root / "diffusers")
    path = save_single_file(pipe, root / "model.safetensors", metadata={"modelspec.title": f"tiny {family.value}"})
    return family, pipe, path, folder


def test_file_is_in_original_layout(round_trip):
    from safetensors import safe_open

    family, _, path, _ = round_trip
    shapes = _header_shapes(path)
    for key in MARKERS[family]:
        assert key in shapes, key
    assert all(key.startswith(PREFIXES[family]) for key in shapes), [
        key for key in shapes if not key.startswith(PREFIXES[family])
    ]
    diffusers_names = ("down_blocks", "up_blocks", "mid_block", "resnets", "transformer_blocks.0.attn.to_q")
    assert not [key for key in shapes if any(name in key for name in diffusers_names)]
    # LDM's VAE attention projections are 1x1 convolutions
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (16, 16, 1, 1)
    assert shapes["first_stage_model.decoder.mid.attn_1.proj_out.weight"] == (16, 16, 1, 1)
    assert detect_family_from_keys(shapes) is family
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"modelspec.title": f"tiny {family.value}"}


def test_open_clip_layout_fuses_qkv_and_transposes_projection():
    pipe = build_tiny_pipeline(Family.SDXL, seed=0)
    state = single_file_state_dict(pipe)
    prefix = "conditioner.embedders.1.model."
    layer = pipe.text_encoder_2.text_model.encoder.layers[1].self_attn
    in_proj = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight])
    assert torch.equal(state[prefix + "transformer.resblocks.1.attn.in_proj_weight"], in_proj)
    assert torch.equal(state[prefix + "text_projection"], pipe.text_encoder_2.text_projection.weight.T)
    embeddings = pipe.text_encoder_2.text_model.embeddings
    assert torch.equal(state[prefix + "positional_embedding"], embeddings.position_embedding.weight)
    assert torch.equal(state[prefix + "token_embedding.weight"], embeddings.token_embedding.weight)


def _tensors(module) -> dict[str, torch.Tensor]:
    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(module.named_buffers(remove_duplicate=False))
    return tensors


def _own_memory(pipe) -> None:
    """Copy every loaded weight into memory PyTorch allocated.

    Tensors read from a safetensors file sit at whatever offset the file gives them; CPU matmul
    kernels take another SIMD path for operands that are not 64-byte aligned, which can change the
    last bit of a sum (seen on SD3's pooled projection). The values are proven equal separately.
    """
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.data = tensor.data.clone()


def test_diffusers_reads_back_every_weight_and_the_same_image(round_trip):
    family, pipe, path, folder = round_trip
    loaded = _load(family, pipe, path, folder)

    modules = {name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
    assert modules
    for name, module in modules.items():
        original, reloaded = _tensors(module), _tensors(getattr(loaded, name))
        assert original.keys() == reloaded.keys(), name
        for key, tensor in original.items():
            other = reloaded[key]
            assert other.device.type == "cpu" and other.dtype == tensor.dtype, f"{name}.{key}"
            assert torch.equal(other, tensor), f"{name}.{key}"

    _own_memory(loaded)
    images = [
        p("a red fox", num_inference_steps=2, height=64, width=64, output_type="np",
          generator=torch.Generator().manual_seed(7)).images
        for p in (pipe, loaded)
    ]
    assert images[0].shape == (1, 64, 64, 3)
    assert np.array_equal(images[0], images[1])


# --- U-Net names for the real configs (meta tensors: no memory, no download) ----------------------------

SD15_UNET = dict(cross_attention_dim=768)  # UNet2DConditionModel's defaults are SD1.5's
SDXL_UNET = dict(
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    sample_size=128,
)


@pytest.mark.parametrize("config", [SD15_UNET, SDXL_UNET], ids=["sd15", "sdxl"])
def test_unet_names_match_diffusers_reader_on_real_configs(config):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    names = unet_names_to_original(unet.config)
    state = unet.state_dict()
    original = {"model.diffusion_model." + original_unet_name(key, names): tensor for key, tensor in state.items()}
    back = convert_ldm_unet_checkpoint(original, dict(unet.config))
    assert back.keys() == state.keys()
    assert all(back[key] is state[key] for key in state)


def test_unet_names_for_kohya_sdxl():
    names = unet_names_to_original(SDXL_UNET | {"layers_per_block": 2, "mid_block_type": "UNetMidBlock2DCrossAttn"})
    name = original_unet_name("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", names)
    assert "lora_unet_" + name.replace(".", "_") == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert names["down_blocks.2.attentions.1"] == "input_blocks.8.1"
    assert names["up_blocks.0.upsamplers.0.conv"] == "output_blocks.2.2.conv"
    assert names["up_blocks.2.resnets.2.conv_shortcut"] == "output_blocks.8.0.skip_connection"
    assert names["mid_block.attentions.0"] == "middle_block.1"
    assert names["add_embedding.linear_2"] == "label_emb.0.2"


def test_unet_names_follow_layers_per_block():
    config = SD15_UNET | {
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    }
    names = unet_names_to_original(config)
    assert names["down_blocks.0.downsamplers.0.conv"] == "input_blocks.2.0.op"
    assert names["down_blocks.1.resnets.0.conv1"] == "input_blocks.3.0.in_layers.2"
    assert names["up_blocks.0.upsamplers.0.conv"] == "output_blocks.1.1.conv"
    assert names["up_blocks.1.attentions.1"] == "output_blocks.3.1"


def test_sd35_dual_attention_and_qk_norm_round_trip(tmp_path):
    from diffusers import SD3Transformer2DModel

    pipe = build_tiny_pipeline(Family.SD3, seed=1)
    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    config |= {"dual_attention_layers": (0,), "qk_norm": "rms_norm"}
    torch.manual_seed(1)
    pipe.transformer = SD3Transformer2DModel.from_config(config)
    folder = _config_folder(pipe, tmp_path / "diffusers")
    path = save_single_file(pipe, tmp_path / "sd35.safetensors")
    shapes = _header_shapes(path)
    assert shapes["model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight"] == (96, 32)
    assert "model.diffusion_model.joint_blocks.1.context_block.attn.ln_k.weight" in shapes

    loaded = SD3Transformer2DModel.from_single_file(
        str(path), config=str(folder), subfolder="transformer", local_files_only=True
    )
    original, reloaded = _tensors(pipe.transformer), _tensors(loaded)
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[key], reloaded[key]) for key in original)


# --- errors ---------------------------------------------------------------------------------------


def test_errors_name_the_problem(tmp_path):
    class FluxPipeline:
        pass

    with pytest.raises(ModelError, match="'FluxPipeline' cannot be saved"):
        save_single_file(FluxPipeline(), tmp_path / "x.safetensors")
    with pytest.raises(ModelError, match=r"path='.*model\.ckpt' must end in \.safetensors"):
        save_single_file(build_tiny_pipeline(Family.SD1), tmp_path / "model.ckpt")
    with pytest.raises(ModelError, match="'UNetMidBlock2DSimpleCrossAttn'"):
        unet_names_to_original(SD15_UNET | {
            "down_block_types": ("DownBlock2D",), "up_block_types": ("UpBlock2D",), "layers_per_block": 1,
            "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        })
