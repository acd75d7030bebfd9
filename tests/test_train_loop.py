"""The training loop on the tiny SD1 pipeline: exact resume, a NaN stop, a dataset with problems, what a run leaves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from hayai.demo.shapes import samples
from hayai.models.families import Family
from hayai.training.samples import LABEL_PX
from hayai.store import Store
from hayai.training import TrainConfig, TrainingDiverged, train_lora
from hayai.training.checkpoint import checkpoint_dirs, load_state


def _dataset(folder, count=8, *, broken=False):
    """Shapes with captions; `broken` adds a corrupt PNG and an image without a caption in a kohya folder."""
    (folder / "3_zqx").mkdir(parents=True)
    for i, (_, caption, image) in enumerate(samples(3, count)):
        target = folder / ("3_zqx" if i % 2 else "") / f"{i:02d}.png"
        image.save(target)
        if not (broken and i == 1):
            target.with_suffix(".txt").write_text(caption.replace(" on ", ", on "))
    if broken:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return folder


def _config(tiny_folders, dataset, name, **overrides):
    settings = dict(
        dataset=str(dataset), model=str(tiny_folders[Family.SD1]), output_name=name, steps=6, batch_size=2, rank=4,
        learning_rate=1e-3, dropout=0.1, caption_shuffle=True, caption_dropout=0.2, noise_offset=0.05,
        gradient_accumulation=2, checkpoint_every=3, validation_every=3, sample_every=0, trigger_word="zqx",
        validation_fraction=0.25,
    )
    return TrainConfig(**{**settings, **overrides})


def _weights(path):
    return load_file(str(path))


def test_resumed_run_equals_the_uninterrupted_run(tiny_folders, tmp_path):
    """Ctrl-C at step 2 (between checkpoints) saves a checkpoint; --resume ends with the same weights, bit for bit,
    and the same losses: optimizer, schedule, RNG (LoRA dropout, caption shuffle/dropout, noise) and data order."""
    dataset = _dataset(tmp_path / "data")
    whole = train_lora(_config(tiny_folders, dataset, "whole"))

    def interrupt(event):
        if event.phase == "train" and event.step == 2:
            raise KeyboardInterrupt

    stopped = train_lora(_config(tiny_folders, dataset, "split"), progress=interrupt)
    assert (stopped.status, stopped.step, stopped.lora_path) == ("interrupted", 2, None)
    assert [step for step, _ in checkpoint_dirs(stopped.run_dir)] == [2]
    resumed = train_lora(TrainConfig(output_name="split"), resume=True)
    assert (resumed.status, resumed.step) == ("ok", 6)

    mine, theirs = _weights(resumed.files["kohya"]), _weights(whole.files["kohya"])
    assert mine.keys() == theirs.keys() and len(mine) > 0
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert any(theirs[k].abs().max() > 0 for k in theirs if "lora_up" in k)  # it trained
    assert resumed.losses == whole.losses and resumed.validation == whole.validation
    with Store() as store:
        runs = store.runs(kind="train_lora")
        assert [r.status for r in runs] == ["ok", "interrupted", "ok"]
        assert store.training_run(runs[0].id).resumed_from == 2
        assert [s for s, _ in store.training_metrics(runs[0].id, "loss")] == [3, 4, 5, 6]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_folders, tmp_path, monkeypatch):
    from hayai.training.run import Run

    real = Run.micro_loss

    def poisoned(self, ids):
        loss = real(self, ids)
        return loss * float("nan") if self.step >= 4 else loss

    monkeypatch.setattr(Run, "micro_loss", poisoned)
    config = _config(tiny_folders, _dataset(tmp_path / "data"), "nan")
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at step 5.*last good checkpoint is .*step-000003"):
        train_lora(config)
    [(step, folder)] = checkpoint_dirs(config.run_dir)
    assert step == 3
    state = load_state(folder)
    assert state["step"] == 3 and all(torch.isfinite(v).all() for v in state["network"].values())
    assert all(torch.isfinite(v).all() for v in _weights(folder / "nan.safetensors").values())
    with Store() as store:
        [run] = store.runs(kind="train_lora")
        assert run.status == "error" and "loss became nan" in run.error
    assert not (config.run_dir / "nan.safetensors").exists()


def test_a_dataset_with_a_corrupt_image_and_a_missing_caption_trains_and_says_so(tiny_folders, tmp_path):
    dataset = _dataset(tmp_path / "data", broken=True)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in dataset.rglob("*"))
    result = train_lora(_config(tiny_folders, dataset, "rough", steps=3, gradient_accumulation=1, sample_every=3,
                                sample_steps=2, sample_seeds=(1, 2), save_formats=("kohya", "diffusers")))
    assert sorted((p.name, p.stat().st_mtime_ns) for p in dataset.rglob("*")) == before  # nothing written there
    codes = {f["code"]: f for f in result.findings}
    assert codes["unreadable_image"]["paths"] == ["broken.png"]
    assert codes["missing_caption"]["paths"] == ["3_zqx/01.png"] and "'zqx'" in codes["missing_caption"]["message"]
    assert any("cannot be read" in w for w in result.warnings)
    manifest = json.loads((result.run_dir / "dataset" / "manifest.json").read_text())
    assert [s["source"] for s in manifest["skipped"]] == ["broken.png"]
    assert len(manifest["items"]) == 8
    assert {i["source"]: i["caption"] for i in manifest["items"]}["3_zqx/01.png"] == "zqx"
    assert {i["repeats"] for i in manifest["items"] if i["source"].startswith("3_zqx/")} == {3}

    # what a finished run leaves: the LoRA in the catalog with kohya's metadata, diffusers' format, a loss chart,
    # a sample grid, the run in the history
    assert result.status == "ok" and result.lora_path.parent.name == "loras"
    with safe_open(str(result.lora_path), "pt") as f:
        metadata = f.metadata()
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "4.0"
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_steps"] == "3"
    assert metadata["modelspec.trigger_phrase"] == "zqx" and metadata["ss_num_train_images"] == "6"
    assert json.loads(metadata["ss_dataset_dirs"])["3_zqx"]["n_repeats"] == 3
    assert "zqx" in json.loads(metadata["ss_tag_frequency"])["3_zqx"]
    from hayai.lora import find_lora, inspect_lora

    info = inspect_lora(find_lora("rough"))
    assert info.family is Family.SD1 and info.ranks == [4] and info.trigger_words[0] == "zqx"
    assert len(load_file(result.files["diffusers"])) == 2 * info.layers
    chart = Image.open(result.files["chart"])
    assert chart.size == (700, 400)
    grid = Image.open(result.files["samples"])
    rows = len(result.config["sample_prompts"])
    assert grid.size == (2 * 64, LABEL_PX + rows * (64 + LABEL_PX)) and "step 3" in grid.text["Comment"]
    assert np.asarray(grid).std() > 0
    with Store() as store:
        [run] = store.runs(kind="train_lora")
        assert run.status == "ok" and str(result.lora_path) in run.outputs and run.peak_memory_bytes > 0
        training = store.training_run(run.id)
        assert training.lora_path == str(result.lora_path) and training.last_step == 3 and training.config["rank"] == 4
        assert [s for s, _ in store.training_metrics(run.id, "val_loss")] == [0, 3]


def test_a_run_with_checkpoints_is_not_restarted_by_accident(tiny_folders, tmp_path):
    from hayai.errors import RequestError

    config = _config(tiny_folders, _dataset(tmp_path / "data", count=4), "again", steps=1, gradient_accumulation=1,
                     validation_fraction=0.0)
    assert train_lora(config).validation == []  # too few images for a split was asked: none held out
    with pytest.raises(RequestError, match="already has checkpoints.*--resume.*--overwrite"):
        train_lora(config)
    with pytest.raises(RequestError, match="rank=4 \\(given 8\\)"):
        train_lora(config.replace(rank=8), resume=True)


@pytest.mark.parametrize("family, extra", [
    (Family.SDXL, {"train_text_encoder": True, "mixed_precision": "bf16", "keep_checkpoints": 1}),
    (Family.SD3, {"gradient_checkpointing": True, "caption_shuffle": False, "noise_offset": 0.0}),
], ids=["sdxl-text-encoders-bf16", "sd3-checkpointing"])
def test_sdxl_and_sd3_train_and_their_files_load(tiny_folders, tmp_path, family, extra):
    from hayai.lora import LoraSet, LoraSpec, inspect_lora
    from hayai.models.tiny import build_tiny_pipeline

    config = _config(tiny_folders, _dataset(tmp_path / "data"), family.value, model=str(tiny_folders[family]), steps=2,
                     gradient_accumulation=1, checkpoint_every=1, learning_rate=5e-2, **extra)
    result = train_lora(config)
    assert result.status == "ok" and all(np.isfinite(v) for _, v in result.losses + result.validation)
    assert [step for step, _ in checkpoint_dirs(result.run_dir)] == ([2] if family is Family.SDXL else [1, 2])
    info = inspect_lora(result.lora_path)
    assert info.family is family
    if family is Family.SDXL:
        assert result.plan["mixed_precision"] == "bf16" and set(info.components) == {"denoiser", "text_encoder", "text_encoder_2"}
    else:
        assert result.plan["gradient_checkpointing"] and any("joint_blocks" in m for m in info.modules)
    pipe = build_tiny_pipeline(family)
    kwargs = dict(num_inference_steps=2, guidance_scale=3.0, output_type="np")
    base = pipe("zqx", generator=torch.Generator().manual_seed(0), **kwargs).images
    applied = LoraSet(pipe, family).apply([LoraSpec(family.value, 1.0)])
    assert applied[0].unmatched == ()
    assert not np.allclose(pipe("zqx", generator=torch.Generator().manual_seed(0), **kwargs).images, base, atol=1e-4)


def test_trains_on_a_prepared_dataset_as_it_is(tiny_folders, tmp_path):
    from hayai.dataset import prepare_dataset, scan_dataset

    prepared = tmp_path / "prepared"
    prepare_dataset(scan_dataset(_dataset(tmp_path / "data", count=5)), prepared, resolution=64, bucket_step=16)
    result = train_lora(_config(tiny_folders, prepared, "prepared", steps=1, gradient_accumulation=1))
    assert result.status == "ok" and result.config["resolution"] == 64 and len(result.validation) == 2
    assert not (result.run_dir / "dataset").exists()  # used where it is
    from hayai.errors import RequestError

    with pytest.raises(RequestError, match="was made at 64"):
        train_lora(_config(tiny_folders, prepared, "other", resolution=128))
