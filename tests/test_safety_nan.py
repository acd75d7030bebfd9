"""A NaN image is never saved: emphasis stays finite, and NaN/inf after denoising or decoding is an error (or a float32 retry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hayai.generation.engine import Engine
from hayai.generation.finite import NonFiniteError, finite_decoder_hook
from hayai.generation.request import GenerationRequest
from hayai.models.families import Family
from hayai.paths import outputs_dir
from hayai.prompts.embed import _emphasize

PROMPT = "a small red (circle:1.2) at the top left on a white background"  # was all black on the built-in model


def test_the_emphasis_prompt_that_made_a_black_image_now_draws(tmp_path):
    result = Engine().generate(GenerationRequest(PROMPT, steps=10, seed=1))
    pixels = np.asarray(result.images[0].image.convert("RGB"), dtype=float)
    assert pixels.max() > 200 and pixels.std() > 10  # a white background with a shape, not black


def test_emphasis_skips_the_rescale_when_the_mean_is_rounding_noise():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1, 77, 32, generator=generator)
    weights = [1.0] * 77
    weights[3] = 1.2
    centred = z - z.mean(dim=-1, keepdim=True)  # every token on 0, as after a layer norm without bias
    out = _emphasize(centred, weights)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, centred * torch.tensor(weights).reshape(1, -1, 1))
    shifted = z + 0.3  # a real mean: A1111's rescale, exactly
    weighted = shifted * torch.tensor(weights).reshape(1, -1, 1)
    torch.testing.assert_close(_emphasize(shifted, weights), weighted * (shifted.mean() / weighted.mean()))


class _Poison:
    """A global forward hook that makes every module named `name` return NaN."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        def hook(module, args, output):
            if type(module).__name__ != self.name:
                return None
            if isinstance(output, tuple):  # the UNet, called with return_dict=False
                return (torch.full_like(output[0], float("nan")), *output[1:])
            return torch.full_like(output, float("nan"))

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize(("module", "phase"), [("Decoder", "vae_decode produced NaN/inf values"),
                                               ("UNet2DConditionModel", "denoise produced NaN/inf values at step 1")])
def test_nan_is_an_error_naming_the_phase_and_no_file_is_written(module, phase):
    engine = Engine()
    with _Poison(module), pytest.raises(NonFiniteError, match=phase):
        engine.generate(GenerationRequest("a red circle", steps=2, seed=1))
    assert not outputs_dir().exists() or not any(outputs_dir().iterdir())
    (run,) = engine.store.runs(kind="generate")
    assert run.status == "error" and "NaN" in run.error


def test_a_half_precision_decoder_that_overflows_is_decoded_again_in_float32(tiny_folders):
    from diffusers import AutoencoderKL

    decoder = AutoencoderKL.from_pretrained(tiny_folders[Family.SD1] / "vae").decoder.eval()
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    decoder.half().float()  # the weights as half precision holds them
    with torch.no_grad():
        expected = decoder(z.float())
    decoder.half()
    overflow = decoder.register_forward_hook(lambda m, args, out: torch.full_like(out, float("inf")) if args[0].dtype == torch.float16 else None)
    decoder.register_forward_hook(finite_decoder_hook)
    with torch.no_grad():
        again = decoder(z)
    assert again.dtype == torch.float16 and next(decoder.parameters()).dtype == torch.float16  # put back as it was
    torch.testing.assert_close(again, expected.half(), atol=0, rtol=0)
    overflow.remove()
    decoder.float()
    with torch.no_grad(), _Poison("Decoder"), pytest.raises(NonFiniteError, match="vae_decode"):  # float32: nothing to retry
        decoder(z.float())
