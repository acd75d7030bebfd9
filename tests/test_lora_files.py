"""LoRA files without a model: formats, inspection, the catalog, names and specs."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from hayai.lora import (
    LoraError,
    LoraNotFoundError,
    LoraSpec,
    combine_specs,
    find_lora,
    inspect_lora,
    list_loras,
    lora_hashes_infotext,
    loras_dir,
    prompt_with_lora_tags,
    read_lora_file,
)
from hayai.lora.apply import AppliedLora
from hayai.lora.formats import detect_format
from hayai.lora.synthetic import random_kohya_lora, save_lora
from hayai.models.families import Family
from hayai.models.tiny import build_tiny_pipeline
from hayai.prompts import parse_prompt
from hayai.store import Store

TAGS = {"10_mychar": {"mychar": 20, "smile": 12, "outdoors": 3}, "1_background": {"outdoors": 30}}
TRAINING = {
    "ss_network_dim": "4", "ss_network_alpha": "2.0", "ss_base_model_version": "sd_v1", "ss_num_train_images": "40",
    "ss_tag_frequency": json.dumps(TAGS), "ss_output_name": "my-style", "ss_learning_rate": "0.0001",
}


@pytest.fixture(scope="module")
def sd1_lora():
    return random_kohya_lora(build_tiny_pipeline(Family.SD1), Family.SD1, rank=4, alpha=2.0)


def test_formats_are_told_apart_by_their_names():
    assert detect_format(["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]) == "kohya"
    assert detect_format(["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"]) == "diffusers"
    assert detect_format(["unet.down_blocks.0.attentions.0.processor.to_q_lora.down.weight"]) == "diffusers-legacy"
    assert detect_format(["base_model.model.down_blocks.0.attentions.0.proj_in.lora_A.weight"]) == "peft"
    with pytest.raises(LoraError, match="not a LoRA file"):
        detect_format(["model.diffusion_model.input_blocks.0.0.weight"])


def test_inspect_reports_rank_alpha_family_training_and_triggers(tmp_path, sd1_lora):
    path = save_lora(sd1_lora, tmp_path / "style.safetensors", TRAINING)
    info = inspect_lora(path)
    assert (info.format, info.family, info.family_source) == ("kohya", Family.SD1, "metadata")
    assert info.ranks == [4] and info.alphas == [2.0]
    assert info.layers == len(sd1_lora) // 3
    assert set(info.components) == {"denoiser", "text_encoder"}
    assert "down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k" in info.modules
    assert info.trigger_words[:3] == ["mychar", "background", "outdoors"]  # folder classes, then frequent tags
    assert info.training["ss_num_train_images"] == "40" and "ss_tag_frequency" not in info.training
    assert info.stray_keys == []


@pytest.mark.parametrize("family", [Family.SDXL, Family.SD3], ids=lambda f: f.value)
def test_inspect_tells_the_family_from_names(tmp_path, family):
    state = random_kohya_lora(build_tiny_pipeline(family), family, rank=2)
    info = inspect_lora(save_lora(state, tmp_path / "x.safetensors"))
    assert (info.family, info.family_source) == (family, "names")


def test_inspect_lists_keys_that_are_not_layers(tmp_path, sd1_lora):
    state = dict(sd1_lora)
    state["lora_unet_down_blocks_0_attentions_0_proj_in.lokr_w1"] = torch.zeros(2, 2)
    del state["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"]
    info = inspect_lora(save_lora(state, tmp_path / "odd.safetensors"))
    reasons = dict(info.stray_keys)
    assert "unsupported LoRA variant (LyCORIS LoKr)" in reasons["lora_unet_down_blocks_0_attentions_0_proj_in.lokr_w1"]
    assert "has no up weight" in reasons["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]


def test_pickle_and_missing_files_are_refused(tmp_path):
    (tmp_path / "old.pt").write_bytes(b"\x80\x04")
    with pytest.raises(LoraError, match="only .safetensors"):
        read_lora_file(tmp_path / "old.pt")
    with pytest.raises(LoraNotFoundError, match="does not exist"):
        read_lora_file(tmp_path / "gone.safetensors")


def _install(root, sub, name, state, metadata=None):
    return save_lora(state, root / sub / f"{name}.safetensors", metadata)


def test_catalog_finds_loras_in_hayai_a1111_and_comfyui_folders(tmp_path, sd1_lora):
    store = Store()
    own = save_lora(sd1_lora, loras_dir() / "styles" / "own.safetensors")
    a1111 = tmp_path / "webui"
    comfy = tmp_path / "ComfyUI"
    plain = tmp_path / "plain"
    in_a1111 = _install(a1111, "models/Lora", "anime", sd1_lora, {"ss_output_name": "anime-v2"})
    in_comfy = _install(comfy, "models/loras", "detail", sd1_lora)
    in_plain = _install(plain, "", "loose", sd1_lora)
    save_lora({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, plain / "checkpoint.safetensors")
    for root in (a1111, comfy, plain):
        store.add_catalog_entry(root, "folder")

    entries = {e.name: e for e in list_loras(store)}
    assert set(entries) == {"own", "anime", "detail", "loose"}  # the plain folder's checkpoint is not a LoRA
    assert entries["anime"].alias == "anime-v2" and entries["anime"].folder == a1111 / "models/Lora"
    assert find_lora("own", store) == own.resolve()
    assert find_lora("anime-v2", store) == in_a1111  # kohya's ss_output_name alias
    assert find_lora("DETAIL", store) == in_comfy
    assert find_lora(str(in_plain), store) == in_plain.resolve()
    with pytest.raises(LoraNotFoundError, match="did you mean 'detail'"):
        find_lora("detai", store)


def test_lora_spec_parses_cli_values():
    assert LoraSpec.parse("style") == LoraSpec("style")
    assert LoraSpec.parse("style:0.7") == LoraSpec("style", 0.7)
    spec = LoraSpec.parse("style:0.5:1.2")
    assert (spec.text_encoder_weight, spec.denoiser_weight) == (0.5, 1.2)
    assert LoraSpec.parse(r"C:\loras\a.safetensors:0.5") == LoraSpec(r"C:\loras\a.safetensors", 0.5)
    assert LoraSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(LoraError, match="weight=nan"):
        LoraSpec("x", float("nan"))


def test_specs_tags_and_infotext_round_trip():
    specs = [LoraSpec("style", 0.7), LoraSpec("detail", 1.0, te_weight=0.5, unet_weight=1.0)]
    prompt = prompt_with_lora_tags("a cat", specs)
    assert prompt == "a cat<lora:style:0.7><lora:detail:0.5:1>"
    parsed = parse_prompt(prompt)
    assert [LoraSpec.from_tag(t) for t in parsed.loras] == [
        LoraSpec("style", 0.7, te_weight=0.7, unet_weight=0.7), LoraSpec("detail", 1.0, te_weight=0.5, unet_weight=1.0),
    ]
    with pytest.raises(LoraError, match="'style' is given 2 times"):
        combine_specs([LoraSpec("style")], parsed.loras)
    applied = [AppliedLora("my:style, v2", loras_dir(), "0" * 64, "0123456789ab", "kohya", 1.0, 1.0, 3, 3)]
    assert lora_hashes_infotext(applied) == "mystyle v2: 0123456789ab"  # A1111 strips ':' and ','
    assert lora_hashes_infotext([]) is None


def test_lora_cli_lists_and_inspects(tmp_path, sd1_lora):
    from hayai.cli.lora import app

    save_lora(sd1_lora, loras_dir() / "style.safetensors", TRAINING)
    runner = CliRunner()
    listed = runner.invoke(app, ["list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [e["name"] for e in json.loads(listed.output)] == ["style"]
    shown = runner.invoke(app, ["inspect", "style", "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert (data["format"], data["family"], data["ranks"], data["alphas"]) == ("kohya", "sd1", [4], [2.0])
    assert data["trigger_words"][0] == "mychar"
    text = runner.invoke(app, ["inspect", "style"])
    assert "A1111 hash" in text.output and "mychar" in text.output


def test_sentence_captions_are_not_trigger_words():
    from hayai.lora.inspect import trigger_words

    captions = {f"a photo of shape {i} on a plain background": 1 for i in range(8)}
    frequency = {"1_shapes": {**captions, "zqx": 8, "red": 3, "a rare tag": 1}}
    assert trigger_words({"ss_tag_frequency": json.dumps(frequency)}) == ["shapes", "zqx", "red"]
