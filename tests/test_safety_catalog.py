"""Damaged model and LoRA files are named as such, with the part that is missing, before anything loads."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from hayai.cli.main import app
from hayai.errors import ModelError
from hayai.lora import find_lora, loras_dir
from hayai.lora.formats import LoraError
from hayai.lora.synthetic import save_lora
from hayai.models.families import Family
from hayai.models.loading import source_from_path


def _lora_state():
    return {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(32, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(2.0)}


def test_a_truncated_lora_is_listed_as_broken_with_the_reason():
    whole = save_lora(_lora_state(), loras_dir() / "whole.safetensors")
    cut = loras_dir() / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-100])  # a download that stopped early
    result = CliRunner().invoke(app, ["lora", "list", "--json"])
    assert result.exit_code == 0, result.output
    problems = {entry["name"]: entry["problem"] for entry in json.loads(result.output)}
    assert problems["whole"] is None
    assert problems["cut"].startswith("damaged file: truncated (") and "download or copy it again" in problems["cut"]
    with pytest.raises(LoraError, match=r"LoRA 'cut' .* cannot be used: damaged file: truncated"):
        find_lora("cut")


def test_a_model_folder_without_its_unet_names_the_missing_part(tiny_folders, tmp_path):
    folder = shutil.copytree(tiny_folders[Family.SD1], tmp_path / "no-unet")
    shutil.rmtree(folder / "unet")
    with pytest.raises(ModelError, match=r"no-unet is incomplete: it has no unet/ folder, which its model_index.json names"):
        source_from_path(folder)
    result = CliRunner().invoke(app, ["generate", "a cat", "--model", str(folder), "--steps", "1"])
    assert isinstance(result.exception, ModelError) and "no unet/ folder" in str(result.exception)
    assert "config.json" not in str(result.exception)


def test_components_hayai_does_not_load_may_be_absent(tiny_folders, tmp_path):
    folder = shutil.copytree(tiny_folders[Family.SD1], tmp_path / "plain")
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]  # listed, folder deleted
    (folder / "model_index.json").write_text(json.dumps(index))
    assert source_from_path(folder).family is Family.SD1
