"""img2img, inpainting, hires fix and progressive upscaling: against diffusers' own pipelines, A1111's
step counts, the demo model's adherence, reproduction, recovery, cancellation and the history."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from hayai.errors import RequestError
from hayai.generation.engine import Engine
from hayai.generation.kinds.base import img2img_schedule
from hayai.generation.options import CancelToken, RunOptions
from hayai.generation.request import GenerationRequest
from hayai.models.families import Family
from hayai.store import Store

FAMILIES = [Family.SD1, Family.SDXL, Family.SD3]
CLASSES = {Family.SD1: ("StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
           Family.SDXL: ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
           Family.SD3: ("StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")}


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def _input_image(path, size=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(path)
    return str(path)


def _corner_mask(path, size=(64, 64)):
    mask = Image.new("L", size, 0)
    mask.paste(255, (size[0] // 2, 0, size[0], size[1] // 2))  # the top right quarter
    mask.save(path)
    return str(path)


def _diffusers(folder, class_name, sampler_cls, **call):
    import diffusers

    pipe = getattr(diffusers, class_name).from_pretrained(folder)
    pipe.scheduler = getattr(diffusers, sampler_cls).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(**call).images


def _sampler(family):
    return ("Euler", "FlowMatchEulerDiscreteScheduler") if family is Family.SD3 else ("Euler a", "EulerAncestralDiscreteScheduler")


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.value)
def test_img2img_equals_diffusers_img2img_pipeline(family, tiny_folders, tmp_path):
    folder = str(tiny_folders[family])
    source = _input_image(tmp_path / "in.png")
    sampler, sampler_cls = _sampler(family)
    request = GenerationRequest("a red square", negative_prompt="blurry", model=folder, init_image=source, steps=4,
                                cfg_scale=5.0, denoising_strength=0.6, denoise_steps="diffusers", sampler=sampler,
                                seed=21, batch_size=2, output_dir=str(tmp_path / "out"))
    result = Engine(device="cpu").generate(request)
    theirs = _diffusers(folder, CLASSES[family][0], sampler_cls, prompt="a red square", negative_prompt="blurry",
                        image=[Image.open(source).convert("RGB")] * 2, strength=0.6, num_inference_steps=4, guidance_scale=5.0,
                        num_images_per_prompt=2, generator=[torch.Generator("cpu").manual_seed(s) for s in (21, 22)])
    for ours, raw in zip(result.images, theirs):
        np.testing.assert_array_equal(_pixels(ours.image), _pixels(raw))
    assert "Denoising strength: 0.6" in result.images[0].infotext
    assert "Denoise steps: diffusers" in result.images[0].infotext


@pytest.mark.parametrize("steps, strength, expected", [(20, 0.75, 16), (20, 1.0, 20), (10, 0.3, 4), (7, 0.0, 1)])
def test_a1111_step_count_is_one_more_than_diffusers(steps, strength, expected):
    total, given, runs = img2img_schedule(steps, strength, "a1111")
    assert runs == expected == int(min(strength, 0.999) * steps) + 1
    assert total == steps and min(int(total * given), total) == runs  # what diffusers then runs
    assert img2img_schedule(steps, 0.75, "diffusers")[2] == int(steps * 0.75)
    exact = img2img_schedule(10, 0.5, "exact")  # A1111's img2img_fix_steps: a schedule of 20, 10 steps run
    assert exact[0] == 20 and exact[2] == 10 and int(exact[0] * exact[1]) == 10


def test_a1111_step_count_runs_the_denoiser_that_often(tiny_folders, tmp_path):
    folder = str(tiny_folders[Family.SD1])
    request = GenerationRequest("a cat", model=folder, init_image=_input_image(tmp_path / "in.png"), steps=10,
                                denoising_strength=0.35, cfg_scale=1.0, seed=3, output_dir=str(tmp_path))
    events = []
    Engine(device="cpu").generate(request, progress=events.append)
    steps = [e for e in events if e.phase == "denoise"]
    assert len(steps) == 4 and steps[-1].done == steps[-1].total == 4  # int(0.35 * 10) + 1


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.value)
def test_inpaint_equals_diffusers_and_keeps_every_unmasked_pixel(family, tiny_folders, tmp_path):
    folder = str(tiny_folders[family])
    sampler, sampler_cls = _sampler(family)
    source, mask = _input_image(tmp_path / "in.png"), _corner_mask(tmp_path / "mask.png")
    request = GenerationRequest("a blue square", model=folder, init_image=source, mask=mask, mask_blur=0, steps=4,
                                denoising_strength=0.9, denoise_steps="diffusers", sampler=sampler, seed=5,
                                output_dir=str(tmp_path / "out"))
    ours = Engine(device="cpu").generate(request).images[0].image
    # negative_prompt="": hayai encodes the empty negative prompt, as A1111 does, where SDXL's pipeline given
    # None would use zeros (force_zeros_for_empty_prompt)
    raw = _diffusers(folder, CLASSES[family][1], sampler_cls, prompt="a blue square", negative_prompt="",
                     image=Image.open(source).convert("RGB"), mask_image=Image.open(mask), strength=0.9,
                     num_inference_steps=4, guidance_scale=7.0, height=64, width=64,
                     generator=[torch.Generator("cpu").manual_seed(5)])[0]
    inside = np.asarray(Image.open(mask)) > 0
    np.testing.assert_array_equal(_pixels(ours)[inside], _pixels(raw)[inside])  # the redrawn part is diffusers'
    np.testing.assert_array_equal(_pixels(ours)[~inside], _pixels(Image.open(source))[~inside])  # the rest is the input's


@pytest.mark.parametrize("family", [Family.SDXL, Family.SD3], ids=lambda f: f.value)
def test_inpaint_runs_on_sdxl_and_sd3_and_keeps_the_rest(family, tiny_folders, tmp_path):
    source, mask = _input_image(tmp_path / "in.png"), _corner_mask(tmp_path / "mask.png")
    request = GenerationRequest("a blue square", model=str(tiny_folders[family]), init_image=source, mask=mask, steps=2,
                                sampler=_sampler(family)[0], seed=5, output_dir=str(tmp_path), inpaint_only_masked=True,
                                masked_content="fill")
    image = Engine(device="cpu").generate(request).images[0].image
    far = np.zeros((64, 64), bool)
    far[40:, :24] = True  # well away from the blurred mask
    np.testing.assert_array_equal(_pixels(image)[far], _pixels(Image.open(source))[far])


def test_hires_fix_runs_both_passes_at_a1111_step_counts(tiny_folders, tmp_path):
    folder = str(tiny_folders[Family.SD1])
    events = []
    request = GenerationRequest("a cat", model=folder, width=64, height=64, steps=3, seed=8, hr_scale=2.0, hr_steps=2,
                                denoising_strength=0.5, output_dir=str(tmp_path))
    result = Engine(device="cpu").generate(request, progress=events.append)
    assert result.images[0].image.size == (128, 128)
    steps = [e for e in events if e.phase == "denoise"]
    assert [e.done for e in steps] == [1, 2, 3, 4, 5] and steps[0].total == 5  # 3 first-pass steps, then exactly 2
    text = result.images[0].infotext
    assert "Size: 64x64" in text and "Hires upscale: 2" in text and "Hires steps: 2" in text
    assert "Denoising strength: 0.5" in text and "Hires upscaler: Latent" in text


def test_progressive_upscaling_chains_passes_and_reproduces(tiny_folders, tmp_path):
    folder = str(tiny_folders[Family.SD1])
    request = GenerationRequest("a cat", model=folder, steps=2, seed=8, progressive=(64, 96, 128), hr_upscaler="Lanczos",
                                output_dir=str(tmp_path))
    engine = Engine(device="cpu")
    result = engine.generate(request)
    assert result.images[0].image.size == (128, 128)
    assert "Progressive: \"64,96,128\"" in result.images[0].infotext
    again = engine.reproduce(result.images[0].path)
    np.testing.assert_array_equal(_pixels(again.images[0].image), _pixels(result.images[0].image))


def test_img2img_reproduces_from_its_output_after_the_input_is_gone(tiny_folders, tmp_path):
    source = _input_image(tmp_path / "in.png")
    request = GenerationRequest("a cat", model=str(tiny_folders[Family.SD1]), init_image=source, steps=3, seed=4,
                                denoising_strength=0.5, output_dir=str(tmp_path / "out"))
    engine = Engine(device="cpu")
    result = engine.generate(request)
    (tmp_path / "in.png").unlink()  # the input was kept by content in $HAYAI_HOME/inputs
    again = engine.reproduce(result.images[0].path)
    np.testing.assert_array_equal(_pixels(again.images[0].image), _pixels(result.images[0].image))
    assert "/inputs/" in again.request.init_image


@pytest.mark.parametrize("phase, target, request_changes", [
    ("vae_encode", "vae.encoder", {"init_image": True}),
    ("denoise", "unet", {"hr_scale": 2.0, "hr_upscaler": "Lanczos"}),
])
def test_oom_in_vae_encode_and_in_the_hires_pass_steps_down(phase, target, request_changes, tiny_folders, tmp_path):
    folder = str(tiny_folders[Family.SD1])
    changes = dict(request_changes)
    if changes.pop("init_image", False):
        changes["init_image"] = _input_image(tmp_path / "in.png")
    request = GenerationRequest("a cat", model=folder, steps=2, seed=1, width=64, height=64, output_dir=str(tmp_path),
                                **changes)
    engine = Engine(device="cpu")
    module = engine.load(folder).pipe
    for part in target.split("."):
        module = getattr(module, part)
    calls = {"n": 0}

    def hook(_module, _args):  # the hires pass's denoiser is the second pass's first call (the 3rd overall)
        calls["n"] += 1
        if calls["n"] == (3 if phase == "denoise" else 1):
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

    module.register_forward_pre_hook(hook)
    result = engine.generate(request)
    assert [e["phase"] for e in result.events if e.get("event") == "out_of_memory"] == [phase]
    # the batch ran again from the start with the same seeds, on the leaner strategy (VAE tiling changes pixels)
    expected = Engine(device="cpu").generate(request, RunOptions(strategy=result.strategy)).images[0].image
    np.testing.assert_array_equal(_pixels(result.images[0].image), _pixels(expected))


def test_interrupt_keeps_finished_images_and_skip_drops_one_batch(tiny_folders, tmp_path):
    folder = str(tiny_folders[Family.SD1])
    request = GenerationRequest("a cat", model=folder, steps=3, seed=10, batch_count=3, output_dir=str(tmp_path))
    token = CancelToken()

    def on_event(event):
        if event.phase == "denoise" and event.done == 4:  # the first step of the second batch
            token.skip()

    skipped = Engine(device="cpu").generate(request, RunOptions(cancel=token, progress=on_event))
    assert [i.seed for i in skipped.images] == [10, 12] and not skipped.interrupted

    token = CancelToken()

    def interrupt(event):
        if event.phase == "save":
            token.interrupt()

    stopped = Engine(device="cpu").generate(request, RunOptions(cancel=token, progress=interrupt))
    assert stopped.interrupted and [i.seed for i in stopped.images] == [10]
    run = Store().run(stopped.run_id)
    assert run.status == "interrupted" and run.outputs == [str(stopped.images[0].path)]


def test_history_has_each_image_as_soon_as_it_is_saved(tiny_folders, tmp_path):
    request = GenerationRequest("a cat", model=str(tiny_folders[Family.SD1]), steps=2, seed=1, batch_count=3,
                                output_dir=str(tmp_path))
    seen = []

    def on_event(event):
        if event.phase == "save":
            seen.append(Store().runs(limit=1)[0].outputs)  # what another process would read now
            if len(seen) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Engine(device="cpu").generate(request, progress=on_event)
    assert [len(outputs) for outputs in seen] == [1, 2]
    run = Store().runs(limit=1)[0]
    assert run.status == "interrupted" and len(run.outputs) == 2


@pytest.mark.parametrize("changes, message", [
    ({"denoising_strength": 1.5}, "denoising_strength=1.5 must be between 0 and 1"),
    ({"init_image": "missing.png"}, "file not found"),
    ({"mask": "wrong-size"}, "mask is 32x32 but init_image is 64x64"),
    ({"hr_upscaler": "4x-UltraSharp", "init_image": None, "hr_scale": 2.0}, "hr_upscaler='4x-UltraSharp' is not available"),
    ({"init_image": None, "mask": "ok"}, "inpainting needs the image"),
])
def test_bad_image_to_image_input_fails_before_the_model_loads(changes, message, tiny_folders, tmp_path, monkeypatch):
    source = _input_image(tmp_path / "in.png")
    masks = {"wrong-size": _corner_mask(tmp_path / "small.png", (32, 32)), "ok": _corner_mask(tmp_path / "m.png")}
    fields = {"prompt": "x", "model": str(tiny_folders[Family.SD1]), "init_image": source, **changes}
    if "mask" in fields:
        fields["mask"] = masks[fields["mask"]]
    engine = Engine(device="cpu")
    monkeypatch.setattr(engine, "load", lambda *a, **k: pytest.fail("the model was loaded before the request was checked"))
    with pytest.raises(RequestError, match=message):
        engine.generate(GenerationRequest(**fields))


def test_demo_model_img2img_at_low_strength_keeps_shape_and_place(tmp_path):
    from hayai.demo.adherence import score
    from hayai.demo.shapes import Scene, render

    scene = Scene("square", "blue", "large", "bottom right", "white")
    render(scene).save(tmp_path / "in.png")
    request = GenerationRequest(scene.caption.replace("blue", "red"), init_image=str(tmp_path / "in.png"), seed=3,
                                denoising_strength=0.3, output_dir=str(tmp_path))
    image = Engine(device="cpu").generate(request).images[0].image
    hits = score(image, scene.caption)
    assert hits["shape"] and hits["position"] and hits["size"], hits


def test_demo_model_inpaints_a_blue_square_in_the_masked_corner(tmp_path):
    from hayai.demo.adherence import score
    from hayai.demo.shapes import Scene, render

    render(Scene("circle", "red", "small", "bottom left", "white")).save(tmp_path / "in.png")
    _corner_mask(tmp_path / "mask.png")  # the top right quarter
    prompt = "a small blue square at the top right on a white background"
    request = GenerationRequest(prompt, init_image=str(tmp_path / "in.png"), mask=str(tmp_path / "mask.png"), seed=2,
                                denoising_strength=1.0, output_dir=str(tmp_path))
    image = Engine(device="cpu").generate(request).images[0].image
    quarter = np.asarray(image.convert("RGB"))[:32, 32:].astype(int)
    blue = (quarter[..., 2] > 150) & (quarter[..., 0] < 100) & (quarter[..., 1] < 120)
    assert blue.sum() >= 10, "no blue shape drawn in the masked corner"
    inside = np.asarray(Image.open(tmp_path / "mask.png")) > 0
    from hayai.generation.kinds.pixels import blur_mask

    untouched = np.asarray(blur_mask(Image.open(tmp_path / "mask.png"), 4)) == 0
    np.testing.assert_array_equal(_pixels(image)[untouched], _pixels(Image.open(tmp_path / "in.png"))[untouched])
    assert inside.sum() > 0 and score is not None


@pytest.mark.parametrize("content", ["latent noise", "latent nothing"])
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.value)
def test_latent_masked_content_redraws_only_the_mask(family, content, tiny_folders, tmp_path):
    source, mask = _input_image(tmp_path / "in.png"), _corner_mask(tmp_path / "mask.png")
    base = dict(model=str(tiny_folders[family]), init_image=source, mask=mask, mask_blur=0, steps=3, seed=5,
                denoising_strength=0.6, sampler=_sampler(family)[0], output_dir=str(tmp_path))
    engine = Engine(device="cpu")
    latent = engine.generate(GenerationRequest("a blue square", masked_content=content, **base)).images[0].image
    original = engine.generate(GenerationRequest("a blue square", **base)).images[0].image
    inside = np.asarray(Image.open(mask)) > 0
    np.testing.assert_array_equal(_pixels(latent)[~inside], _pixels(Image.open(source))[~inside])
    assert np.abs(_pixels(latent)[inside] - _pixels(original)[inside]).mean() > 1  # it started from something else
    assert f"Masked content: {content}" in engine.generate(
        GenerationRequest("a blue square", masked_content=content, **base), save=False).images[0].infotext
