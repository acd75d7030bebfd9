"""Issue 16, training: mixed precision with sample grids, a planned caching phase, `--vram` on `hayai train lora`."""

from __future__ import annotations

import pytest
from PIL import Image

from hayai.demo.shapes import samples
from hayai.models.families import Family
from hayai.training import TrainConfig, train_lora


def _dataset(folder, count=4):
    folder.mkdir(parents=True)
    for i, (_, caption, image) in enumerate(samples(3, count)):
        image.save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(caption)
    return folder


@pytest.mark.parametrize("family, precision", [(Family.SD1, "bf16"), (Family.SD1, "fp16"), (Family.SDXL, "bf16"), (Family.SD3, "bf16")])
def test_mixed_precision_training_makes_its_sample_grids(tiny_folders, tmp_path, family, precision):
    config = TrainConfig(dataset=str(_dataset(tmp_path / "data")), model=str(tiny_folders[family]), output_name="mixed",
                         steps=2, batch_size=1, rank=2, resolution=64, mixed_precision=precision, device="cpu",
                         checkpoint_every=2, sample_every=1, sample_steps=2, sample_seeds=(1,), validation_fraction=0.0)
    result = train_lora(config)
    assert result.status == "ok"
    grids = sorted((result.run_dir / "samples").glob("step-*.png"))
    assert [g.name for g in grids] == ["step-000001.png", "step-000002.png"]
    width, height = Image.open(grids[-1]).size
    assert width == 64 and height % 64 == 0  # one 64 px column (seed), one row per prompt
