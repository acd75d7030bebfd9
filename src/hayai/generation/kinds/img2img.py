"""Image to image: an input image, noised to the denoising strength and denoised again.

The size defaults to the input's (rounded down to the family's multiple); A1111's resize modes fit it
to another size; "Just resize (latent upscale)" encodes the input at its own size and scales the latent.
The step count follows `denoise_steps` (A1111's by default; see `base.img2img_schedule`).
"""

from __future__ import annotations

import dataclasses

from hayai.generation.inputs import keep_input, open_input
from hayai.generation.kinds.base import BatchRun, PipelineKind, img2img_schedule, size_multiple
from hayai.generation.kinds.pixels import resize_image
from hayai.generation.request import round_down_size
from hayai.models.families import Family

__all__ = ["Img2Img", "encode_latents"]

LATENT_RESIZE = "Just resize (latent upscale)"


def encode_latents(pipe, image, seed: int):
    """The VAE latent of a PIL image, scaled (and shifted) as the pipeline's own latents are."""
    import torch

    pixels = pipe.image_processor.preprocess(image).to(pipe.vae.device, pipe.vae.dtype)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = pipe.vae.encode(pixels).latent_dist.sample(generator)
    shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * pipe.vae.config.scaling_factor


class Img2Img(PipelineKind):
    name = "img2img"
    classes = {Family.SD1: "StableDiffusionImg2ImgPipeline", Family.SD2: "StableDiffusionImg2ImgPipeline",
               Family.SDXL: "StableDiffusionXLImg2ImgPipeline", Family.SD3: "StableDiffusion3Img2ImgPipeline",
               Family.FLUX: "FluxImg2ImgPipeline"}

    def prepare(self, request, family):
        kept = keep_input(request.init_image, "init_image")
        image = open_input(kept, "init_image")
        return dataclasses.replace(request, init_image=kept), round_down_size(*image.size, size_multiple(family))

    def steps_run(self, request):
        return img2img_schedule(request.steps, request.denoising_strength, request.denoise_steps)[2]

    @staticmethod
    def schedule(request):
        """(the request as diffusers runs it, the strength to give diffusers, the steps that run)."""
        total, strength, runs = img2img_schedule(request.steps, request.denoising_strength, request.denoise_steps)
        return dataclasses.replace(request, steps=total), strength, runs

    def run(self, batch: BatchRun, request, seeds):
        pipe = self.pipeline(batch.loaded)
        image = open_input(request.init_image, "init_image").convert("RGB")
        if request.resize_mode == LATENT_RESIZE:
            import torch.nn.functional as F

            own = image.resize(round_down_size(*image.size, size_multiple(batch.loaded.family)))
            latents = encode_latents(pipe, own, seeds[0])
            factor = pipe.vae_scale_factor
            fitted = F.interpolate(latents, size=(request.height // factor, request.width // factor), mode="bilinear")
        else:
            fitted = resize_image(request.resize_mode, image, request.width, request.height)
        pass_request, strength, runs = self.schedule(request)
        # one input per image of the batch: SD3's pipeline encodes image i with generator i and has no image i
        # for a single input; SD1/SDXL repeat a single input the same way themselves
        images = fitted.repeat(len(seeds), 1, 1, 1) if hasattr(fitted, "repeat") else [fitted] * len(seeds)
        return batch.call(pipe, pass_request, seeds, {"image": images, "strength": strength}, runs)
