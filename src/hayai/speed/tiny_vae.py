"""A tiny autoencoder (diffusers' `AutoencoderTiny`, e.g. TAESD / TAESDXL / TAESD3) in place of the model's VAE.

On a CPU the decoder is a large share of a short run (FastSD CPU measured TAESD alone at about 1.4x end
to end; REFERENCE: wave2-ecosystem.md 6.5), at the cost of softer detail. hayai ships no weights: the
user names a diffusers `AutoencoderTiny` folder they have (safetensors only), matched to the model's
latent channels. It is loaded per call (about 2.4 M parameters) and placed where the pipeline runs; the
pipeline of the call is the loaded one with only `vae` replaced (`hayai.models.assemble`).
"""

from __future__ import annotations

import json
from pathlib import Path

from hayai.errors import RequestError

__all__ = ["load_tiny_vae", "with_tiny_vae"]


def load_tiny_vae(path: str):
    folder = Path(path).expanduser()
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RequestError(f"tiny_vae={path!r} is not a diffusers AutoencoderTiny folder (no readable config.json)") from None
    if config.get("_class_name") != "AutoencoderTiny":
        raise RequestError(f"tiny_vae={path!r} holds a {config.get('_class_name')!r}, not an AutoencoderTiny")
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(folder, use_safetensors=True)


def with_tiny_vae(pipe, path: str):
    """`pipe` with the tiny autoencoder at `path` as its VAE, on the device and in the dtype its VAE runs in."""
    vae = load_tiny_vae(path)
    want = pipe.vae.config.latent_channels
    if vae.config.latent_channels != want:
        raise RequestError(f"tiny_vae={path!r} has {vae.config.latent_channels} latent channels; this model's VAE "
                           f"has {want} (TAESD/TAESDXL for SD1.x/SDXL have 4, TAESD3 has 16)")
    from hayai.models.assemble import assemble

    vae.to(device=pipe._execution_device, dtype=pipe.vae.dtype)
    return assemble(pipe, vae=vae)
