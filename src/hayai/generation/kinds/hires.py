"""Hires fix and progressive upscaling: a text-to-image pass, then image-to-image passes at larger sizes.

Pass 1 runs at the request's size. Each later pass upscales what the one before made, either its latent
(A1111's latent modes: no decode, `torch.nn.functional.interpolate`) or its decoded image (Lanczos,
Nearest), and redraws it with fresh noise from the same seeds at `denoising_strength`, running exactly
`hr_steps` steps (or `steps`), as A1111's hires pass does, with the hires sampler and prompts if given.
Progressive upscaling (seed 000's 512 -> 768 -> 1024) is the same chain with more than one later pass.
"""

from __future__ import annotations

import dataclasses

from hayai.errors import RequestError
from hayai.generation.fields import LATENT_UPSCALERS, PIXEL_UPSCALERS
from hayai.generation.kinds.base import BatchRun, PipelineKind, img2img_schedule, size_multiple
from hayai.generation.kinds.img2img import Img2Img
from hayai.generation.kinds.txt2img import Txt2Img
from hayai.generation.samplers import split_legacy_sampler_name

__all__ = ["Hires", "UPSCALERS"]

UPSCALERS = (*LATENT_UPSCALERS, *PIXEL_UPSCALERS)


class Hires(PipelineKind):
    name = "hires"
    classes = Img2Img.classes

    def check(self, request, family):
        super().check(request, family)
        if request.hr_upscaler not in UPSCALERS:
            raise RequestError(f"hr_upscaler={request.hr_upscaler!r} is not available; choose one of: "
                               f"{', '.join(UPSCALERS)} (upscaler model files are not supported yet)")
        sizes = request.passes(size_multiple(family))
        if any(b[0] < a[0] or b[1] < a[1] for a, b in zip(sizes, sizes[1:])):
            raise RequestError(f"the hires passes {sizes} must not shrink the image")

    def _hires_steps(self, request) -> int:
        return request.hr_steps or request.steps

    def steps_run(self, request):
        passes = len(request.passes()) - 1
        return request.steps + passes * self._hires_steps(request)

    def plan_size(self, request):
        return request.passes()[-1]

    def run(self, batch: BatchRun, request, seeds):
        loaded = batch.loaded
        sizes = request.passes(size_multiple(loaded.family))
        latent = request.hr_upscaler in LATENT_UPSCALERS
        first = Txt2Img()
        images = batch.call(first.pipeline(loaded), request, seeds, {}, request.steps,
                            output_type="latent" if latent else "pil")
        pipe = self.pipeline(loaded)
        sampler, schedule = request.sampler, request.schedule_type
        if request.hr_sampler is not None:
            sampler, legacy = split_legacy_sampler_name(request.hr_sampler)
            schedule = legacy or schedule
        total, strength, runs = img2img_schedule(self._hires_steps(request), request.denoising_strength, "exact")
        for index, (width, height) in enumerate(sizes[1:], start=1):
            with batch.timer.phase("upscale"):
                images = self._upscale(images, request.hr_upscaler, width, height, pipe.vae_scale_factor)
            pass_request = dataclasses.replace(
                request, width=width, height=height, steps=total, sampler=sampler, schedule_type=schedule,
                prompt=request.prompt if request.hr_prompt is None else request.hr_prompt,
                negative_prompt=request.negative_prompt if request.hr_negative_prompt is None else request.hr_negative_prompt,
            )
            last = index == len(sizes) - 1
            images = batch.call(pipe, pass_request, seeds, {"image": images, "strength": strength}, runs,
                                output_type="pil" if last or not latent else "latent")
        return images

    @staticmethod
    def _upscale(images, upscaler: str, width: int, height: int, factor: int):
        if upscaler in LATENT_UPSCALERS:
            import torch.nn.functional as F

            mode, antialias = LATENT_UPSCALERS[upscaler]
            return F.interpolate(images, size=(height // factor, width // factor), mode=mode, antialias=antialias)
        from PIL import Image

        method = Image.Resampling.NEAREST if upscaler == "Nearest" else Image.Resampling.LANCZOS
        return [image.resize((width, height), method) for image in images]
