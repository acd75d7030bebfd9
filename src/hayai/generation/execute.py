"""One pipeline call for one batch: the plain diffusers call, observed.

The engine's images must be those of diffusers itself, so this module only adds observers: forward
hooks that charge time to phases and note which phase is running (so an out-of-memory error names
it), and the step callback for progress. Prompts are encoded outside the pipeline only where the
pipeline cannot do it as A1111 does (clip skip) or where the text encoders live on another device.
"""

from __future__ import annotations

from hayai.generation.encoding import encode_overrides
from hayai.generation.request import GenerationRequest
from hayai.generation.results import ProgressEvent
from hayai.memory.apply import is_out_of_memory
from hayai.models.families import Family

__all__ = ["pipeline_kwargs", "run_batch", "OutOfMemoryInPhase"]


class OutOfMemoryInPhase(Exception):
    """The device ran out of memory; `phase` says where ("text_encode", "denoise" or "vae_decode")."""

    def __init__(self, phase: str, error: BaseException):
        super().__init__(f"out of memory during {phase}: {error}")
        self.phase = phase


def pipeline_kwargs(request: GenerationRequest, seeds: list[int]) -> dict:
    """The diffusers call for one batch of a resolved request: the one place the mapping lives.

    Each image gets its own CPU generator seeded with its own seed (A1111: image i gets seed + i), so
    an image depends only on its seed, on any device.
    """
    import torch

    return dict(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_inference_steps=request.steps,
        guidance_scale=float(request.cfg_scale),
        width=request.width,
        height=request.height,
        num_images_per_prompt=len(seeds),
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        # A1111 counts the last layer as 1; diffusers counts layers skipped
        **({"clip_skip": request.clip_skip - 1} if request.clip_skip > 1 else {}),
    )


def _encoders(pipe) -> list:
    return [m for m in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")) if m is not None]


def _denoiser(pipe):
    return getattr(pipe, "unet", None) or pipe.transformer


def run_batch(pipe, family: Family, request: GenerationRequest, seeds: list[int], *, timer, emit, batch: int,
              total_steps: int, encode_on: str | None = None):
    """One pipeline call; charges text encoding (hooks), denoising (to the last step) and decoding."""
    phase = ["text_encode"]
    last_step = [0.0]

    def on_step_end(_pipe, step, _timestep, _kwargs):
        last_step[0] = timer.now()
        emit(ProgressEvent("denoise", batch * request.steps + step + 1, total_steps))
        return {}

    def entering(name):
        def hook(_module, _args):
            phase[0] = name
        return hook

    # prepended: the phase is known before any other hook (or the module itself) can fail
    handles = [_denoiser(pipe).register_forward_pre_hook(entering("denoise"), prepend=True),
               pipe.vae.decoder.register_forward_pre_hook(entering("vae_decode"), prepend=True)]
    before_encode = timer.seconds["text_encode"]
    start = timer.now()
    try:
        with timer.hooked(_encoders(pipe), "text_encode"):
            kwargs = encode_overrides(pipe, family, pipeline_kwargs(request, seeds), request.clip_skip)
            if encode_on is not None:
                kwargs = _encode_outside(pipe, family, kwargs, request)
            output = pipe(**kwargs, callback_on_step_end=on_step_end, output_type="pil")
    except Exception as error:
        if is_out_of_memory(error):
            raise OutOfMemoryInPhase(phase[0], error) from error
        raise
    finally:
        for handle in handles:
            handle.remove()
    end = timer.now()
    encode_seconds = timer.seconds["text_encode"] - before_encode
    timer.add("denoise", last_step[0] - start - encode_seconds)
    timer.add("vae_decode", end - last_step[0])
    return output.images


def _encode_outside(pipe, family: Family, kwargs: dict, request: GenerationRequest) -> dict:
    """Encode the prompts where the text encoders are (the CPU), then hand the embeddings to the denoiser's device."""
    if "prompt_embeds" in kwargs:
        embeds = {k: kwargs.pop(k) for k in ("prompt_embeds", "negative_prompt_embeds")}
    else:
        encoder = _encoders(pipe)[0]
        common = dict(device=encoder.device, num_images_per_prompt=1,
                      do_classifier_free_guidance=request.cfg_scale > 1, negative_prompt=kwargs.pop("negative_prompt"))
        skip = kwargs.pop("clip_skip", None)
        prompt = kwargs.pop("prompt")
        if family in (Family.SD1, Family.SD2):
            positive, negative = pipe.encode_prompt(prompt, clip_skip=skip, **common)
            embeds = {"prompt_embeds": positive, "negative_prompt_embeds": negative}
        else:
            extra = {"prompt_2": None, "prompt_3": None} if family is Family.SD3 else {"prompt_2": None}
            positive, negative, pooled, negative_pooled = pipe.encode_prompt(prompt, clip_skip=skip, **extra, **common)
            embeds = {"prompt_embeds": positive, "negative_prompt_embeds": negative,
                      "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    target = _denoiser(pipe)
    kwargs.pop("prompt", None)
    kwargs.pop("negative_prompt", None)
    kwargs.update({k: v.to(target.device, target.dtype) for k, v in embeds.items() if v is not None})
    return kwargs
