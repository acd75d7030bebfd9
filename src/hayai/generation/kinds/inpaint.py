"""Inpainting: redraw what a mask covers, keep every other pixel as it was.

A1111's semantics around diffusers' inpainting pipelines (plain 4-channel models and 9-channel
inpainting models alike): the mask (white = redraw, or the mask's / the image's alpha), invert, mask
blur with A1111's kernel, "only masked" (the padded region around the mask redrawn at the full size,
then pasted back), masked content "fill" (pre-filled with the surrounding colours) or "original". The
result is composited over the input through the blurred mask, so pixels the mask leaves at 0 come back
exactly. "latent noise" and "latent nothing" start the masked area of the latent from noise drawn from the
image's seed, or from zeros (A1111's `init_latent * mask + noise * nmask`): the edited latent is handed to
diffusers' pipeline as its image (with `masked_image_latents`, so it is not multiplied by a pixel-sized mask);
that needs a plain model, as the 9-channel inpainting models condition on the masked image itself.
"""

from __future__ import annotations

import dataclasses

from hayai.errors import RequestError
from hayai.generation.inputs import keep_input, open_input
from hayai.generation.kinds.base import BatchRun
from hayai.generation.kinds.img2img import Img2Img, encode_latents
from hayai.generation.kinds.pixels import binary_mask, blur_mask, crop_region, paste_back, prefill, resize_image
from hayai.models.components import denoiser_of
from hayai.models.families import Family

__all__ = ["Inpaint"]

LATENT_CONTENT = ("latent noise", "latent nothing")


class Inpaint(Img2Img):  # its input, step count and schedule are img2img's
    name = "inpaint"
    classes = {Family.SD1: "StableDiffusionInpaintPipeline", Family.SD2: "StableDiffusionInpaintPipeline",
               Family.SDXL: "StableDiffusionXLInpaintPipeline", Family.SD3: "StableDiffusion3InpaintPipeline",
               Family.FLUX: "FluxInpaintPipeline"}

    def prepare(self, request, family):
        request, size = super().prepare(request, family)
        mask = request.mask if request.mask == "alpha" else keep_input(request.mask, "mask")
        if mask != "alpha":
            init = open_input(request.init_image, "init_image")
            shape = open_input(mask, "mask")
            if shape.size != init.size:
                raise RequestError(f"mask is {shape.width}x{shape.height} but init_image is {init.width}x{init.height}; "
                                   "give a mask of the image's size")
        return dataclasses.replace(request, mask=mask), size

    def masks(self, request):
        """(input image, blurred mask for the overlay, the region redrawn or None for the whole picture)."""
        source = open_input(request.init_image, "init_image")
        init = source.convert("RGB")
        raw = "alpha" if request.mask == "alpha" else open_input(request.mask, "mask")
        mask = binary_mask(raw, source, invert=request.mask_invert)
        blurred = blur_mask(mask, request.mask_blur)
        if blurred.getbbox() is None:
            raise RequestError("the mask covers nothing: white (or, inverted, black) marks what to redraw")
        box = crop_region(blurred, request.inpaint_padding, request.width, request.height) if request.inpaint_only_masked else None
        return init, blurred, box

    def run(self, batch: BatchRun, request, seeds):
        pipe = self.pipeline(batch.loaded)
        init, blurred, box = self.masks(request)
        if box is not None:
            image = resize_image("Resize and fill", init.crop(box), request.width, request.height)
            mask = resize_image("Resize and fill", blurred.crop(box), request.width, request.height)
            overlay_base, overlay_mask = init, blurred
        else:
            image = resize_image(request.resize_mode, init, request.width, request.height)
            mask = resize_image(request.resize_mode, blurred, request.width, request.height)
            overlay_base, overlay_mask = image, mask.point(lambda v: min(255, v * 2))  # A1111: mask x 2, clipped
        if request.masked_content == "fill":
            image = prefill(image, mask)
        pass_request, strength, runs = self.schedule(request)
        extra = {"image": [image] * len(seeds), "mask_image": [mask] * len(seeds), "strength": strength}
        if request.masked_content in LATENT_CONTENT:
            latents = self._latent_start(batch, pipe, image, mask, seeds, request.masked_content)
            extra.update(image=latents, masked_image_latents=latents)
        results = batch.call(pipe, pass_request, seeds, extra, runs)
        return [paste_back(overlay_base, result, overlay_mask, box) for result in results]

    @staticmethod
    def _latent_start(batch: BatchRun, pipe, image, mask, seeds: list[int], content: str):
        """The input's latent with the masked area replaced by the seed's noise, or by zeros."""
        import numpy as np
        import torch
        from PIL import Image

        from hayai.generation.execute import OutOfMemoryInPhase
        from hayai.memory.apply import is_out_of_memory

        denoiser = denoiser_of(pipe)
        if denoiser.config.in_channels != pipe.vae.config.latent_channels:
            raise RequestError(f"masked content {content!r} needs a plain model: an inpainting model "
                               "(9-channel UNet) draws from the masked image itself; use 'original' or 'fill'")
        try:
            with batch.timer.phase("vae_encode"):
                latents = torch.cat([encode_latents(pipe, image, seed) for seed in seeds])
        except Exception as error:
            if is_out_of_memory(error):
                raise OutOfMemoryInPhase("vae_encode", error) from error
            raise
        factor = pipe.vae_scale_factor
        small = mask.resize((image.width // factor, image.height // factor), Image.Resampling.BILINEAR)
        redraw = torch.from_numpy(np.rint(np.asarray(small, dtype=np.float32) / 255.0))[None, None].to(latents)
        if content == "latent nothing":
            return latents * (1 - redraw)
        noise = torch.cat([torch.randn(latents.shape[1:], generator=torch.Generator("cpu").manual_seed(seed))[None]
                           for seed in seeds]).to(latents)
        return latents * (1 - redraw) + noise * redraw
