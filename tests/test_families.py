"""Model family detection from diffusers folders and from single-file checkpoint keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hayai.errors import ModelError
from hayai.models.families import FAMILY_INFO, Family, detect_family_from_folder, detect_family_from_keys


def _copy(tiny_folders, family: Family, dest: Path) -> Path:
    return Path(shutil.copytree(tiny_folders[family], dest))


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# -- diffusers folders -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL, Family.SD3])
def test_tiny_folders_are_detected(tiny_folders, family):
    assert detect_family_from_folder(tiny_folders[family]) is family


def test_detection_accepts_a_string_path(tiny_folders):
    assert detect_family_from_folder(str(tiny_folders[Family.SDXL])) is Family.SDXL


def test_sd2_is_split_from_sd1_by_cross_attention_width(tiny_folders, tmp_path):
    folder = _copy(tiny_folders, Family.SD1, tmp_path / "sd2")
    _edit_json(folder / "unet" / "config.json", cross_attention_dim=1024)
    assert detect_family_from_folder(folder) is Family.SD2
    # the untouched original is still SD1
    assert detect_family_from_folder(tiny_folders[Family.SD1]) is Family.SD1


@pytest.mark.parametrize(
    ("source", "class_name", "expected"),
    [
        (Family.SD1, "StableDiffusionImg2ImgPipeline", Family.SD1),
        (Family.SD1, "StableDiffusionInpaintPipeline", Family.SD1),
        (Family.SDXL, "StableDiffusionXLImg2ImgPipeline", Family.SDXL),
        (Family.SDXL, "StableDiffusionXLInpaintPipeline", Family.SDXL),
        (Family.SD3, "StableDiffusion3Img2ImgPipeline", Family.SD3),
    ],
)
def test_img2img_and_inpaint_class_names_map_to_the_same_family(tiny_folders, tmp_path, source, class_name, expected):
    folder = _copy(tiny_folders, source, tmp_path / "variant")
    _edit_json(folder / "model_index.json", _class_name=class_name)
    assert detect_family_from_folder(folder) is expected


def test_flux_class_name_is_flux(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert detect_family_from_folder(tmp_path) is Family.FLUX


def test_unsupported_pipeline_class_is_a_model_error(tiny_folders, tmp_path):
    folder = _copy(tiny_folders, Family.SD1, tmp_path / "kandinsky")
    _edit_json(folder / "model_index.json", _class_name="KandinskyV22Pipeline")
    with pytest.raises(ModelError) as caught:
        detect_family_from_folder(folder)
    message = str(caught.value)
    assert "'KandinskyV22Pipeline' is not supported" in message
    assert str(folder) in message
    assert "StableDiffusionXLPipeline" in message  # says what is supported


def test_folder_without_model_index_is_a_model_error(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelError, match=r"not a diffusers model folder: it has no model_index.json"):
        detect_family_from_folder(tmp_path)


def test_damaged_model_index_is_a_model_error(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPip')
    with pytest.raises(ModelError, match="model_index.json"):
        detect_family_from_folder(tmp_path)


def test_family_info_is_consistent():
    assert FAMILY_INFO[Family.SD1].native_size == 512
    assert FAMILY_INFO[Family.SDXL].native_size == 1024
    for family in (Family.SD3, Family.FLUX):
        assert FAMILY_INFO[family].flow_matching and FAMILY_INFO[family].size_multiple == 16
        assert not FAMILY_INFO[family].clip_skip
    for family in (Family.SD1, Family.SD2, Family.SDXL):
        assert not FAMILY_INFO[family].flow_matching and FAMILY_INFO[family].size_multiple == 8


# -- single-file checkpoint keys (original layouts) -------------------------------------------------

UNET = "model.diffusion_model."


def _sd1_keys(context: int = 768) -> dict[str, tuple[int, ...]]:
    return {
        f"{UNET}input_blocks.0.0.weight": (320, 4, 3, 3),
        f"{UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, context),
        f"{UNET}middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, context),
        f"{UNET}out.2.weight": (4, 320, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    }


def _sd2_keys() -> dict[str, tuple[int, ...]]:
    keys = {k: v for k, v in _sd1_keys(context=1024).items() if not k.startswith("cond_stage_model.")}
    keys["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = (3072, 1024)
    keys["cond_stage_model.model.token_embedding.weight"] = (49408, 1024)
    return keys


def _sdxl_keys() -> dict[str, tuple[int, ...]]:
    return {
        f"{UNET}input_blocks.0.0.weight": (320, 4, 3, 3),
        f"{UNET}input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
        f"{UNET}label_emb.0.0.weight": (1280, 2816),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": (3840, 1280),
        "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    }


def _sd3_keys() -> dict[str, tuple[int, ...]]:
    return {
        f"{UNET}joint_blocks.0.context_block.attn.qkv.weight": (4608, 1536),
        f"{UNET}joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536),
        f"{UNET}x_embedder.proj.weight": (1536, 16, 2, 2),
        "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "first_stage_model.decoder.conv_in.weight": (512, 16, 3, 3),
    }


def _flux_keys(prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}double_blocks.0.img_attn.qkv.weight": (9216, 3072),
        f"{prefix}double_blocks.0.txt_attn.qkv.weight": (9216, 3072),
        f"{prefix}single_blocks.0.linear1.weight": (21504, 3072),
        f"{prefix}img_in.weight": (3072, 64),
    }


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        pytest.param(_sd1_keys(), Family.SD1, id="sd1"),
        pytest.param(_sd2_keys(), Family.SD2, id="sd2"),
        pytest.param(_sdxl_keys(), Family.SDXL, id="sdxl"),
        pytest.param(_sd3_keys(), Family.SD3, id="sd3"),
        pytest.param(_flux_keys(), Family.FLUX, id="flux-bfl"),
        pytest.param(_flux_keys("model.diffusion_model."), Family.FLUX, id="flux-comfyui"),
    ],
)
def test_family_from_checkpoint_keys(keys, expected):
    assert detect_family_from_keys(keys) is expected


def test_sd2_by_context_width_alone():
    """A 1024-wide cross-attention is SD2 even if the text encoder was stripped from the file."""
    keys = {k: v for k, v in _sd1_keys(context=1024).items() if not k.startswith("cond_stage_model.")}
    assert detect_family_from_keys(keys) is Family.SD2


def test_sd2_by_openclip_text_encoder_alone():
    keys = {k: v for k, v in _sd2_keys().items() if "attn2" not in k}
    assert detect_family_from_keys(keys) is Family.SD2


def test_sd1_without_text_encoder_is_still_sd1():
    keys = {k: v for k, v in _sd1_keys().items() if not k.startswith("cond_stage_model.")}
    assert detect_family_from_keys(keys) is Family.SD1


def test_sdxl_by_label_emb_alone():
    keys = {k: v for k, v in _sdxl_keys().items() if not k.startswith("conditioner.")}
    assert detect_family_from_keys(keys) is Family.SDXL


def test_double_blocks_without_single_blocks_is_not_flux():
    keys = {k: v for k, v in _flux_keys().items() if "single_blocks" not in k}
    with pytest.raises(ModelError):
        detect_family_from_keys(keys)


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(
            {
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320, 1, 1),
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": (320, 4, 1, 1),
                "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": (),
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 768),
            },
            id="kohya-lora",
        ),
        pytest.param(
            {"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)}, id="vae"
        ),
        pytest.param({}, id="empty"),
    ],
)
def test_non_model_keys_are_a_model_error(keys):
    expected = r"LoRA/adapter weights" if any("lora" in key for key in keys) else r"could not tell the model family .*LoRA or VAE"
    with pytest.raises(ModelError, match=expected):
        detect_family_from_keys(keys)


def test_flux_lora_in_original_layout_is_not_a_model():
    keys = {
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": (16, 3072),
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": (9216, 16),
        "diffusion_model.single_blocks.0.linear1.lora_A.weight": (16, 3072),
        "diffusion_model.single_blocks.0.linear1.lora_B.weight": (21504, 16),
    }
    with pytest.raises(ModelError):
        detect_family_from_keys(keys)
