"""The engine against raw diffusers: same request, same pixels; and what it saves and logs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hayai.errors import RequestError
from hayai.generation.engine import Engine, pipeline_kwargs
from hayai.generation.imagefile import read_image_metadata
from hayai.generation.infotext import parse_infotext
from hayai.generation.request import GenerationRequest
from hayai.generation.samplers import build_scheduler
from hayai.models.families import FAMILY_INFO, Family
from hayai.models.loading import load_pipeline, source_from_path
from hayai.store import Store

FAMILIES = [Family.SD1, Family.SDXL, Family.SD3]


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _raw_diffusers_images(folder, *, prompt, negative, steps, cfg, width, height, seeds, scheduler_cls, scheduler_kwargs):
    """The plain diffusers recipe a user would write, independent of the engine's code path."""
    import diffusers

    family = source_from_path(folder).family
    pipe_cls = getattr(diffusers, FAMILY_INFO[family].pipeline_class)
    pipe = pipe_cls.from_pretrained(folder)
    pipe.scheduler = getattr(diffusers, scheduler_cls).from_config(pipe.scheduler.config, **scheduler_kwargs)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt,
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=cfg,
        width=width,
        height=height,
        num_images_per_prompt=len(seeds),
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
    )
    return out.images


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.value)
def test_engine_matches_raw_diffusers_exactly(family, tiny_folders, tmp_path):
    folder = tiny_folders[family]
    flow = FAMILY_INFO[family].flow_matching
    sampler, scheduler_cls, kwargs = (
        ("Euler", "FlowMatchEulerDiscreteScheduler", {}) if flow else ("Euler a", "EulerAncestralDiscreteScheduler", {})
    )
    request = GenerationRequest(
        prompt="a small red circle", negative_prompt="blurry", model=str(folder), steps=3, cfg_scale=5.0,
        sampler=sampler, width=64, height=96, seed=1234, batch_size=2, output_dir=str(tmp_path / "out"),
    )
    result = Engine().generate(request)
    raw = _raw_diffusers_images(
        folder, prompt="a small red circle", negative="blurry", steps=3, cfg=5.0, width=64, height=96,
        seeds=[1234, 1235], scheduler_cls=scheduler_cls, scheduler_kwargs=kwargs,
    )
    assert [i.seed for i in result.images] == [1234, 1235]
    for ours, theirs in zip(result.images, raw):
        assert ours.image.size == (64, 96)
        np.testing.assert_array_equal(_pixels(ours.image), _pixels(theirs))
        # what was saved is what was generated (PNG is lossless)
        from PIL import Image

        np.testing.assert_array_equal(_pixels(Image.open(ours.path)), _pixels(ours.image))
    # the two images of the batch differ: each has its own seed
    assert not np.array_equal(_pixels(result.images[0].image), _pixels(result.images[1].image))


def test_karras_schedule_changes_the_image_and_is_recorded(tiny_folders, tmp_path):
    base = GenerationRequest(prompt="a blue square", model=str(tiny_folders[Family.SD1]), steps=4, seed=7,
                             sampler="DPM++ 2M", schedule_type="Uniform", output_dir=str(tmp_path))
    engine = Engine()
    uniform = engine.generate(base)
    karras = engine.generate(dataclasses.replace(base, schedule_type="Karras"))
    assert not np.array_equal(_pixels(uniform.images[0].image), _pixels(karras.images[0].image))
    params = parse_infotext(read_image_metadata(karras.images[0].path).infotext).params
    assert params["Sampler"] == "DPM++ 2M" and params["Schedule type"] == "Karras"


def test_pipeline_kwargs_map_a1111_fields():
    request = GenerationRequest(prompt="p", negative_prompt="n", steps=9, cfg_scale=4.5, width=64, height=128,
                                seed=10, clip_skip=2, sampler="Euler")
    kwargs = pipeline_kwargs(request, [10, 11])
    assert kwargs["clip_skip"] == 1  # A1111 clip skip 2 = diffusers skips 1 layer
    assert kwargs["num_images_per_prompt"] == 2 and kwargs["guidance_scale"] == 4.5
    assert [g.initial_seed() for g in kwargs["generator"]] == [10, 11]
    assert "clip_skip" not in pipeline_kwargs(dataclasses.replace(request, clip_skip=1), [10])


def test_clip_skip_changes_sd1_output(tiny_folders, tmp_path):
    base = GenerationRequest(prompt="a green triangle", model=str(tiny_folders[Family.SD1]), steps=2, seed=3,
                             output_dir=str(tmp_path))
    engine = Engine()
    one = engine.generate(base).images[0]
    two = engine.generate(dataclasses.replace(base, clip_skip=2)).images[0]
    assert not np.array_equal(_pixels(one.image), _pixels(two.image))
    assert "Clip skip: 2" in two.infotext and "Clip skip" not in one.infotext


def test_saved_image_carries_infotext_and_full_request(tiny_folders, tmp_path):
    request = GenerationRequest(prompt="a red circle, top left", negative_prompt="ugly", model=str(tiny_folders[Family.SD1]),
                                steps=2, seed=99, batch_size=2, batch_count=2, output_dir=str(tmp_path))
    result = Engine().generate(request)
    assert [i.seed for i in result.images] == [99, 100, 101, 102]
    assert [i.path.name for i in result.images] == ["00000-99.png", "00001-100.png", "00002-101.png", "00003-102.png"]
    meta = read_image_metadata(result.images[3].path)
    info = parse_infotext(meta.infotext)
    assert info.prompt == "a red circle, top left" and info.negative_prompt == "ugly"
    assert info.params["Seed"] == "102" and info.params["Size"] == "64x64"
    assert info.params["Model hash"] == result.model_hash[:10]
    assert meta.hayai["request"]["seed"] == 99 and meta.hayai["image"] == {"index": 3, "seed": 102, "batch_index": 1}


def test_reproduce_from_image_is_pixel_identical(tiny_folders, tmp_path):
    request = GenerationRequest(prompt="a yellow star", model=str(tiny_folders[Family.SDXL]), steps=2, seed=-1,
                                batch_size=3, output_dir=str(tmp_path / "first"))
    engine = Engine()
    first = engine.generate(request)
    target = first.images[2]
    again = Engine().reproduce(target.path, output_dir=str(tmp_path / "again"))
    assert len(again.images) == 1 and again.images[0].seed == target.seed
    np.testing.assert_array_equal(_pixels(again.images[0].image), _pixels(target.image))


def test_reproduce_from_a1111_infotext_only(tiny_folders, tmp_path):
    """An image with nothing but A1111's `parameters` chunk is re-made from its own seed."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    model = str(tiny_folders[Family.SD1])
    made = Engine().generate(GenerationRequest(prompt="a white circle", model=model, steps=2, seed=5, sampler="Euler",
                                               output_dir=str(tmp_path / "a")))
    a1111_png = tmp_path / "from_a1111.png"
    info = PngInfo()
    info.add_text("parameters", made.images[0].infotext.replace("Model: tiny-sd1", f"Model: {model}"))
    Image.open(made.images[0].path).save(a1111_png, pnginfo=info)
    again = Engine().reproduce(a1111_png, output_dir=str(tmp_path / "b"))
    np.testing.assert_array_equal(_pixels(again.images[0].image), _pixels(made.images[0].image))


def test_history_records_every_run(tiny_folders, tmp_path):
    engine = Engine()
    result = engine.generate(GenerationRequest(prompt="a red square", model=str(tiny_folders[Family.SD3]), steps=2,
                                               seed=11, output_dir=str(tmp_path)))
    run = Store().run(result.run_id)
    assert run.status == "ok" and run.kind == "generate"
    assert run.seeds == [11] and run.outputs == [str(result.images[0].path)]
    assert run.model_hash == result.model_hash and run.request["sampler"] == "Euler"
    assert set(run.timings) >= {"load", "text_encode", "denoise", "vae_decode", "save"}
    assert all(seconds >= 0 for seconds in run.timings.values())
    assert run.peak_memory_bytes and run.peak_memory_bytes > 0


def test_failed_run_is_logged_and_leaves_no_file(tiny_folders, tmp_path, monkeypatch):
    engine = Engine()
    loaded = engine.load(str(tiny_folders[Family.SD1]))

    def broken_decode(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(loaded.pipe.vae, "decode", broken_decode)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="decoder exploded"):
        engine.generate(GenerationRequest(prompt="x", model=str(tiny_folders[Family.SD1]), steps=2, seed=1,
                                          output_dir=str(out)))
    run = Store().runs(limit=1)[0]
    assert run.status == "error" and "decoder exploded" in run.error and run.outputs == []
    assert not out.exists() or list(out.iterdir()) == []


def test_resolution_is_validated_against_the_family(tiny_folders):
    with pytest.raises(RequestError, match="width=72 must be a multiple of 16"):
        Engine().generate(GenerationRequest(prompt="x", model=str(tiny_folders[Family.SD3]), width=72, height=64))


def test_the_model_stays_resident_between_requests(tiny_folders, tmp_path):
    engine = Engine()
    model = str(tiny_folders[Family.SD1])
    first = engine.load(model)
    engine.generate(GenerationRequest(prompt="x", model=model, steps=1, seed=1, output_dir=str(tmp_path)))
    assert engine.load(model) is first
    result = engine.generate(GenerationRequest(prompt="x", model=model, steps=1, seed=1, output_dir=str(tmp_path)))
    assert result.timings["load"] < 0.5  # no reload: a lookup, not a from_pretrained


def test_scheduler_built_for_each_request_from_the_model_config(tiny_folders):
    pipe = load_pipeline(source_from_path(tiny_folders[Family.SD1]))
    scheduler = build_scheduler("DPM++ 2M", "Karras", dict(pipe.scheduler.config), False)
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler" and scheduler.config.use_karras_sigmas
    assert scheduler.config.beta_schedule == pipe.scheduler.config.beta_schedule


def test_interrupted_run_keeps_finished_images_and_is_logged(tiny_folders, tmp_path):
    """Ctrl-C in the second batch: the first batch's images are complete files, the run says interrupted."""
    engine = Engine()
    calls = []

    def stop_in_second_batch(event):
        calls.append(event)
        if event.phase == "denoise" and event.done == 3:  # step 1 of batch 2 (2 steps per batch)
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        engine.generate(GenerationRequest(prompt="x", model=str(tiny_folders[Family.SD1]), steps=2, seed=4,
                                          batch_count=2, output_dir=str(out)), progress=stop_in_second_batch)
    run = Store().runs(limit=1)[0]
    assert run.status == "interrupted" and run.outputs == [str(out / "00000-4.png")]
    assert sorted(p.name for p in out.iterdir()) == ["00000-4.png"]  # no temporary or partial file
    assert read_image_metadata(out / "00000-4.png").hayai["image"]["seed"] == 4
