"""Live previews: a picture of the image in progress, from the latents of a denoising step.

Every denoising step's progress event carries a `StepPreview` (`ProgressEvent.preview`). A consumer that
wants a picture, such as the server's `/sdapi/v1/progress` at A1111's `show_progress_every_n_steps`, asks it
for one, inside the step callback, and pays for the method it names:
- "cheap": a linear map from the latent channels to RGB, one pixel per latent (A1111's "Approx cheap",
  ComfyUI's latent2rgb). hayai ships no table of factors: they are fitted once per VAE from that VAE
  (`latent_rgb`: its decoder's response to each channel at uniform latents), so any model's VAE works,
  SD3's 16 channels included, and a fine-tuned VAE gets its own. With SD1.5's VAE architecture on our 2-core
  CPU (one thread): 5.5 s to fit, once per loaded VAE, then 0.3 ms a preview at 512 px.
- "full": the pipeline's own VAE: the model's, or the tiny autoencoder a request decodes with (`tiny_vae`).
  With the model's VAE it costs what the final decode costs (41 s at 512 px in the same measurement), so it
  suits GPUs and small images.
- "taesd": a tiny autoencoder for the model's family that the user put in `$HAYAI_HOME/models/VAE-approx/`,
  as A1111 keeps its TAESD decoders there, but a diffusers `AutoencoderTiny` folder each (safetensors):
  `taesd` (SD1.x, SD2), `taesdxl`, `taesd3`, `taef1` (Flux). Full-sized, about as cheap as "cheap". Without
  one, "cheap".
- "auto": "full" where the pipeline decodes with an `AutoencoderTiny` (a TAESD: cheap and close to the final
  image), else "taesd" (so "cheap" when there is none).
Asking for a picture reads the latents and changes nothing: the run's images are the same with or without
previews (tested).
"""

from __future__ import annotations

import weakref
from pathlib import Path

from hayai import paths
from hayai.models.families import Family

__all__ = ["METHODS", "TAESD_NAMES", "StepPreview", "latent_rgb", "taesd_folder"]

METHODS = ("auto", "cheap", "taesd", "full")
# madebyollin's names for the tiny autoencoder of each family's latent space (A1111's VAE-approx files)
TAESD_NAMES = {Family.SD1: "taesd", Family.SD2: "taesd", Family.SDXL: "taesdxl", Family.SD3: "taesd3",
               Family.FLUX: "taef1"}
_TAESD: dict = {}  # (folder, mtime) -> AutoencoderTiny
_PROBE = 8  # the uniform latents the fit decodes are _PROBE x _PROBE
_FITTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # VAE module -> (weights [C, 3], bias [3])


def _decoder_input(vae, latents):
    """The latents as the pipeline hands them to `vae.decode` (SD1/SDXL: scaled back; SD3/Flux: and shifted)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return latents / vae.config.scaling_factor + shift


def _placed(vae, tensor, like):
    """`tensor` as the pipeline hands latents to `vae.decode`: on the device the pipeline runs on (`like`'s;
    offload hooks move the VAE's weights there) and in the VAE's dtype."""
    return tensor.to(like.device, next(vae.parameters()).dtype)


def latent_rgb(vae, like):
    """(weights [C, 3], bias [3]) with RGB in [-1, 1] ~ bias + latents' channels @ weights, for latents as the
    sampler sees them: the decoder's mean colour at uniform latents 0 and +-1 in each channel (central
    differences), fitted once per VAE module and kept while it lives; `like` is a tensor on the device the
    pipeline runs on (the step's latents)."""
    import torch

    if vae in _FITTED:
        return _FITTED[vae]
    channels = vae.config.latent_channels
    probes = torch.zeros(2 * channels + 1, channels, _PROBE, _PROBE)
    for c in range(channels):
        probes[1 + 2 * c, c] = 1.0
        probes[2 + 2 * c, c] = -1.0
    with torch.no_grad():
        decoded = vae.decode(_placed(vae, _decoder_input(vae, probes), like)).sample
    colours = decoded.float().mean(dim=(2, 3)).cpu()  # (2C + 1, 3)
    weights = (colours[1::2] - colours[2::2]) / 2
    fitted = (weights, colours[0])
    _FITTED[vae] = fitted
    return fitted


def taesd_folder(family: Family) -> Path | None:
    """The tiny autoencoder for `family`'s latents in `$HAYAI_HOME/models/VAE-approx/`, or None."""
    folder = paths.models_dir() / "VAE-approx" / TAESD_NAMES[family]
    return folder if (folder / "config.json").is_file() else None


def _taesd(folder: Path):
    """The AutoencoderTiny in `folder`, loaded once (again if its config changes)."""
    from hayai.speed.tiny_vae import load_tiny_vae

    key = (folder, (folder / "config.json").stat().st_mtime_ns)
    if key not in _TAESD:
        _TAESD.clear()  # one at a time: a server previews one model's family at once
        _TAESD[key] = load_tiny_vae(str(folder)).eval()
    return _TAESD[key]


class StepPreview:
    """The latents at the end of one denoising step, pictured on demand (`image`)."""

    def __init__(self, pipe, latents, size: tuple[int, int], family: Family | None = None):
        self.pipe, self.latents, self.size = pipe, latents, size  # size: the image's (width, height)
        self.family = family

    def _spatial(self):
        """The latents as (batch, channels, h, w): Flux's packed sequence unpacked."""
        latents = self.latents
        if latents.ndim == 3:
            width, height = self.size
            latents = type(self.pipe)._unpack_latents(latents, height, width, self.pipe.vae_scale_factor)
        return latents

    def method_for(self, method: str) -> str:
        """The method "auto" stands for with this pipeline; others as they are."""
        if method not in METHODS:
            raise ValueError(f"preview method {method!r} is unknown; known: {', '.join(METHODS)}")
        if method == "auto" and type(self.pipe.vae).__name__ == "AutoencoderTiny":
            return "full"
        if method in ("auto", "taesd"):
            return "taesd" if self.family is not None and taesd_folder(self.family) is not None else "cheap"
        return method

    def image(self, method: str = "auto", index: int = 0):
        """A PIL picture of image `index` of the batch: latent-sized with "cheap", full-sized with the others."""
        import torch
        from diffusers.image_processor import VaeImageProcessor

        latents = self._spatial()[index : index + 1]
        method = self.method_for(method)
        with torch.no_grad():
            if method == "cheap":
                weights, bias = latent_rgb(self.pipe.vae, latents)
                rgb = torch.einsum("bchw,cd->bdhw", latents.float().cpu(), weights) + bias.view(1, 3, 1, 1)
            elif method == "taesd":
                vae = _taesd(taesd_folder(self.family)).to(latents.device)  # float32: it is small
                rgb = vae.decode(_decoder_input(vae, latents.float())).sample.float().cpu()
            else:
                vae = self.pipe.vae
                rgb = vae.decode(_placed(vae, _decoder_input(vae, latents), latents)).sample.float().cpu()
        return VaeImageProcessor().postprocess(rgb, output_type="pil")[0]  # [-1, 1] to 8 bits as the pipelines do
