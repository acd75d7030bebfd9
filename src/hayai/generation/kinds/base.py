"""What every pipeline kind shares: its diffusers class per family, built from the loaded pipeline's
components, and the one way a kind runs a pipeline call (`BatchRun.call`).

A kind owns: `classes` (family -> diffusers pipeline class), `prepare` (inputs kept, size from the input
image), `check` (what the resolved request must satisfy), `steps_run` (steps a batch really runs, for
progress), `plan_size` (the largest pass, for the planner) and `run` (one batch, to PIL images).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from hayai.errors import RequestError
from hayai.generation.execute import run_batch
from hayai.generation.request import GenerationRequest
from hayai.generation.samplers import build_scheduler
from hayai.models.assemble import assemble
from hayai.models.families import FAMILY_INFO, Family
from hayai.speed.levers import applied
from hayai.speed.tiny_vae import with_tiny_vae

__all__ = ["PipelineKind", "BatchRun", "derived_pipeline", "img2img_schedule"]


def derived_pipeline(loaded, class_name: str):
    """The diffusers pipeline `class_name` over the loaded pipeline's own modules (no copy, no reload; see
    `hayai.models.assemble`). Patched LoRA weights are the same tensors. Kept per loaded pipeline."""
    if type(loaded.pipe).__name__ == class_name:
        return loaded.pipe
    cache = loaded.derived
    key = (id(loaded.pipe), class_name)
    if key not in cache:
        import diffusers

        pipe = assemble(loaded.pipe, getattr(diffusers, class_name))
        cache.clear()  # pipelines of an earlier load share nothing with this one
        cache[key] = pipe
    return cache[key]


def img2img_schedule(steps: int, strength: float, mode: str) -> tuple[int, float, int]:
    """(num_inference_steps, strength to give diffusers, steps that run) for an image-to-image pass.

    diffusers runs int(num_inference_steps * strength) steps from index num_inference_steps minus that.
    A1111 runs int(min(strength, 0.999) * steps) + 1 from the index before (one more step, one index
    earlier), and with "exact" (its img2img_fix_steps option, and every hires pass) exactly `steps` of a
    schedule of int(steps / min(strength, 0.999)). Both are a diffusers call with another strength: one
    that makes diffusers' int() land on A1111's count (the half keeps float rounding from landing below).
    """
    if mode == "diffusers":
        runs = int(steps * strength)
        if runs < 1:
            raise RequestError(f"denoising_strength={strength:g} with {steps} steps runs no step the way diffusers "
                               "counts (int(steps * strength)); raise either, or use denoise_steps=a1111")
        return steps, strength, runs
    if mode == "exact":
        total = max(steps, int(steps / max(min(strength, 0.999), 0.001)))
        runs = steps
    else:
        total = steps
        runs = int(min(strength, 0.999) * steps) + 1
    return total, (1.0 if runs >= total else (runs + 0.5) / total), runs


@dataclass
class BatchRun:
    """One batch of a run in progress: what a kind needs to make its pipeline calls."""

    loaded: object  # hayai.generation.engine.LoadedModel
    timer: object
    emit: object
    total_steps: int  # of the whole run, for progress
    done_steps: int  # steps of the run before this batch
    encode_on: str | None = None
    cancel: object = None

    def call(self, pipe, request: GenerationRequest, seeds: list[int], extra: dict, runs: int,
             output_type: str = "pil"):
        """One pipeline call with the request's sampler; `runs` is how many steps it denoises."""
        loaded = self.loaded
        pipe.scheduler = build_scheduler(request.sampler, request.schedule_type, loaded.base_scheduler_config,
                                         loaded.flow_matching)
        accepted = inspect.signature(pipe.__call__).parameters
        dropped = tuple(name for name in ("width", "height") if name not in accepted)  # img2img: the image's size
        if request.tiny_vae is not None:
            pipe = with_tiny_vae(pipe, request.tiny_vae)
        with applied(pipe, request):  # the request's speed levers, removed after the call (none: the plain call)
            images = run_batch(pipe, loaded.family, request, seeds, timer=self.timer, emit=self.emit, batch=0,
                               total_steps=self.total_steps, encode_on=self.encode_on, extra=extra,
                               output_type=output_type, done_steps=self.done_steps, cancel=self.cancel,
                               drop=dropped)
        self.done_steps += runs
        return images


class PipelineKind:
    name = ""
    classes: dict[Family, str] = {}

    def pipeline(self, loaded):
        class_name = self.classes.get(loaded.family)
        if class_name is None:
            raise RequestError(f"{self.name} is not available for {loaded.family.value} models")
        return derived_pipeline(loaded, class_name)

    def prepare(self, request: GenerationRequest, family: Family) -> tuple[GenerationRequest, tuple[int, int] | None]:
        """The request with its input images kept, and the size to use when it names none (None: the model's)."""
        return request, None

    def check(self, request: GenerationRequest, family: Family) -> None:
        if family not in self.classes:
            raise RequestError(f"{self.name} is not available for {family.value} models")

    def steps_run(self, request: GenerationRequest) -> int:
        return request.steps

    def plan_size(self, request: GenerationRequest) -> tuple[int, int]:
        return request.width, request.height

    def run(self, batch: BatchRun, request: GenerationRequest, seeds: list[int]) -> list:
        raise NotImplementedError


def size_multiple(family: Family) -> int:
    return FAMILY_INFO[family].size_multiple
