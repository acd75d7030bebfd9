"""One pipeline call for one batch: the plain diffusers call, observed.

The engine's images must be those of diffusers itself, so this module only adds observers: forward
hooks that charge time to phases and note which phase is running (so an out-of-memory error names
it), and the step callback for progress. Prompts are encoded by hayai (A1111 syntax, long prompts,
clip skip; `hayai.generation.encoding`) into the embeddings the pipeline would make itself for a plain
prompt, and handed to the pipeline with the rest of the plain call.
"""

from __future__ import annotations

from hayai.generation.encoding import prompt_kwargs
from hayai.generation.finite import check_finite, finite_decoder_hook
from hayai.generation.preview import StepPreview
from hayai.generation.request import GenerationRequest
from hayai.generation.results import ProgressEvent
from hayai.memory.apply import is_out_of_memory, without_text_encoders
from hayai.models.components import denoiser_of
from hayai.models.families import Family

__all__ = ["pipeline_kwargs", "run_batch", "OutOfMemoryInPhase"]


class OutOfMemoryInPhase(Exception):
    """The device ran out of memory; `phase` says where ("text_encode", "vae_encode", "denoise", "vae_decode",
    "upscale")."""

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


def run_batch(pipe, family: Family, request: GenerationRequest, seeds: list[int], *, timer, emit, batch: int,
              total_steps: int, encode_on: str | None = None, extra: dict | None = None, output_type: str = "pil",
              done_steps: int | None = None, cancel=None, drop: tuple[str, ...] = ()):
    """One pipeline call; charges text encoding and VAE encoding (hooks), denoising (to the last step) and
    decoding (from there to the end).

    `encode_on` names the device the text encoders run on when it is not the denoiser's. `extra` holds
    the kind's own call arguments (image, strength, mask_image, ...), over the plain call's.
    `done_steps` is how many steps of the run came before this call (default: `batch` whole batches),
    for progress; `cancel` (a `CancelToken`) is checked at the end of every step.
    """
    phase = ["text_encode"]
    last_step = [0.0]
    schedule = [None]
    before = batch * request.steps if done_steps is None else done_steps

    def on_step_end(pipeline, step, timestep, tensors):
        check_finite(tensors["latents"], "denoise", f" at step {step + 1}")  # before more steps and the decode
        out = schedule[0](pipeline, step, timestep, tensors) if schedule[0] else {}
        last_step[0] = timer.now()
        emit(ProgressEvent("denoise", before + step + 1, total_steps,
                           preview=StepPreview(pipeline, tensors["latents"], (request.width, request.height), family)))
        if cancel is not None:
            cancel.check()
        return out

    def entering(name):
        def hook(_module, _args):
            phase[0] = name
        return hook

    # prepended: the phase is known before any other hook (or the module itself) can fail
    handles = [denoiser_of(pipe).register_forward_pre_hook(entering("denoise"), prepend=True),
               pipe.vae.decoder.register_forward_pre_hook(entering("vae_decode"), prepend=True),
               pipe.vae.encoder.register_forward_pre_hook(entering("vae_encode"), prepend=True),
               pipe.vae.decoder.register_forward_hook(finite_decoder_hook)]  # retries in float32, or raises
    kwargs = {**pipeline_kwargs(request, seeds), **(extra or {})}
    for replaced in ("prompt", "negative_prompt", "clip_skip", *drop):
        kwargs.pop(replaced, None)
    before_encode = timer.seconds["text_encode"] + timer.seconds["vae_encode"]
    start = timer.now()
    try:
        with timer.hooked(_encoders(pipe), "text_encode"), timer.hooked([pipe.vae.encoder], "vae_encode"):
            embeds, schedule[0] = prompt_kwargs(pipe, family, request.prompt, request.negative_prompt, request.clip_skip,
                                                steps=request.steps, images=len(seeds), device=encode_on)
            if encode_on is not None:  # hand the embeddings to the denoiser's device and dtype
                target = denoiser_of(pipe)
                embeds = {k: v.to(target.device, target.dtype) if hasattr(v, "to") else v for k, v in embeds.items()}
            if cancel is not None:
                cancel.check()
            call = pipe if encode_on is None else without_text_encoders(pipe)  # (it would cast to theirs)
            output = call(**{**kwargs, **embeds}, callback_on_step_end=on_step_end, output_type=output_type)
    except Exception as error:
        if is_out_of_memory(error):
            raise OutOfMemoryInPhase(phase[0], error) from error
        raise
    finally:
        for handle in handles:
            handle.remove()
    end = timer.now()
    encode_seconds = timer.seconds["text_encode"] + timer.seconds["vae_encode"] - before_encode
    timer.add("denoise", last_step[0] - start - encode_seconds)
    timer.add("vae_decode", end - last_step[0])
    return output.images
