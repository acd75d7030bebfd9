"""Never save a non-finite image: A1111's NaN check, after every denoising step and after decoding.

NaN or inf in the latents or the decoded pixels comes out of the pipeline as a black (or noisy) PNG that
looks like a result. As A1111 does (`devices.test_for_nans`, and its automatic float32 retry of the VAE),
a decoder that ran in half precision is run again in float32; whatever is still not finite stops the run
with an error naming the phase, before any file is written.
"""

from __future__ import annotations

from hayai.errors import HayaiError

__all__ = ["NonFiniteError", "check_finite", "finite_decoder_hook"]

_ADVICE = {
    "denoise": "try another seed or sampler, a lower CFG scale or emphasis weight, or a float32 strategy (see `hayai plan`)",
    "vae_decode": "the model's VAE fails on these latents even in float32; try another seed, or another VAE/model",
}


class NonFiniteError(HayaiError):
    """A phase produced NaN or inf values; `phase` is "denoise" or "vae_decode"."""

    def __init__(self, phase: str, detail: str = ""):
        super().__init__(f"{phase} produced NaN/inf values{detail}, which would save a black image, so nothing was "
                         f"saved: {_ADVICE[phase]}")
        self.phase = phase


def check_finite(values, phase: str, detail: str = "") -> None:
    """Raise NonFiniteError when the tensor `values` holds a NaN or an inf."""
    import torch

    if not bool(torch.isfinite(values).all()):
        raise NonFiniteError(phase, detail)


def finite_decoder_hook(decoder, args, output):
    """A forward hook for a VAE decoder: a non-finite output of a half-precision decoder is decoded again
    in float32 (the pixels come back in the decoder's dtype); a non-finite float32 output raises."""
    import torch

    if bool(torch.isfinite(output).all()):
        return None
    dtype = next(decoder.parameters()).dtype
    if dtype not in (torch.float16, torch.bfloat16):
        raise NonFiniteError("vae_decode")
    decoder.to(torch.float32)
    try:
        with torch.no_grad():
            again = decoder.forward(*(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args))
    finally:
        decoder.to(dtype)
    check_finite(again, "vae_decode", " (also in float32)")
    return again.to(output.dtype)
