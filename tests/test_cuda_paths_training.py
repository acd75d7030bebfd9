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
    assert width == 64 and height >= 64  # one 64 px column (seed), a row per prompt under a title band


def test_caching_is_planned_with_the_largest_chunk_that_fits():
    from hayai.hardware import parse_device_spec
    from hayai.memory.facts import facts_for_architecture
    from hayai.memory.training import TrainingRequest, caching_bytes, plan_training

    facts = facts_for_architecture("sd15")
    request = TrainingRequest(512, 512, lora_params=23_000_000, train_images=40)
    small = plan_training(facts, request, parse_device_spec("RTX 4060 8GB"))
    big = plan_training(facts, request, parse_device_spec("H200 141GB"))
    assert big.cache_chunk == 8
    assert 1 < small.cache_chunk < 8 and small.cache_fits and small.cache_peak_bytes <= small.budget_bytes
    # the chunk above the chosen one would not have fitted, and the peak is what caching_bytes counts
    above = sum(caching_bytes(facts, request, precision=small.mixed_precision, chunk=small.cache_chunk * 2).values())
    assert above > small.budget_bytes
    assert small.cache_peak_bytes == sum(caching_bytes(facts, request, precision="bf16", chunk=small.cache_chunk).values())
    assert any(r.startswith(f"caching: the VAE encodes {small.cache_chunk} images") for r in small.reasons)


def test_train_lora_takes_vram_and_plans_for_it(tiny_folders, tmp_path):
    from hayai.hardware import capped, parse_device_spec, parse_size
    from hayai.memory.facts import facts_for_architecture
    from hayai.memory.training import TrainingRequest, plan_training
    from tests.test_cli import hayai

    card = parse_device_spec("RTX 3060 12GB")
    whole = plan_training(facts_for_architecture("sd15"), TrainingRequest(512, 512, 3_000_000, 40), card)
    small = plan_training(facts_for_architecture("sd15"), TrainingRequest(512, 512, 3_000_000, 40),
                          capped(card, parse_size("6GB")))
    assert small.budget_bytes < 6 * 1024**3 < whole.budget_bytes
    dataset = _dataset(tmp_path / "data")
    # on a CPU there is no VRAM to cap: refused with what to do, as `hayai generate --vram` is
    cpu = hayai("train", "lora", "--dataset", dataset, "--model", tiny_folders[Family.SD1], "--device", "cpu",
                "--vram", "1.5GB", check=False)
    assert cpu.returncode == 2 and "caps GPU memory" in cpu.stderr
    bad = hayai("train", "lora", "--dataset", dataset, "--vram", "lots", check=False)
    assert bad.returncode != 0 and "vram" in bad.stderr


def test_caching_that_cannot_fit_says_so():
    from hayai.hardware import parse_device_spec
    from hayai.memory.facts import facts_for_architecture
    from hayai.memory.training import TrainingRequest, plan_training

    plan = plan_training(facts_for_architecture("sdxl"), TrainingRequest(1024, 1024, 3_000_000, 40),
                         parse_device_spec("RTX 2060 6GB"))
    assert plan.cache_chunk == 1 and not plan.cache_fits and not plan.to_dict()["cache_fits"]
    assert "even one image is predicted to need more" in plan.reasons[-1]
