"""What a diffusers pipeline's parts are called: the denoiser is a `unet` (SD1/SD2/SDXL) or a `transformer`
(SD3, Flux), and every module that needs it asks here."""

from __future__ import annotations

__all__ = ["denoiser_of", "denoiser_name"]


def denoiser_name(pipe) -> str:
    """"unet" or "transformer": the pipeline attribute that holds its denoiser."""
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def denoiser_of(pipe):
    """The pipeline's denoiser module (its UNet or its transformer)."""
    return getattr(pipe, denoiser_name(pipe))
