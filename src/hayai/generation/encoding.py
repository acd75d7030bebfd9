"""Prompt encoding for a run: A1111 prompts in, the pipeline's embedding kwargs out.

`prompt_kwargs` replaces the pipeline's `prompt`/`negative_prompt` (and `clip_skip`) arguments with
embeddings hayai computes itself (see `hayai.prompts.embed`): weights, BREAK, prompts past 75 tokens,
LoRA tags removed, A1111 clip skip on the prompt and the negative alike. A prompt that uses prompt
editing (`[a:b:0.5]`, `[a|b]`) also gets a step callback that swaps the embeddings when the text changes.
"""

from __future__ import annotations

from typing import Callable

from hayai.models.families import Family
from hayai.prompts.embed import Conditioning, encode_texts
from hayai.prompts.parser import ScheduledText, index_at_step, parse_prompt

__all__ = ["PromptSchedule", "prompt_kwargs"]


def prompt_kwargs(
    pipe, family: Family, prompt: str, negative_prompt: str, clip_skip: int, *, steps: int, images: int = 1, device=None
) -> tuple[dict, Callable | None]:
    """The pipeline kwargs for `prompt` and `negative_prompt` over `images` images, and a step callback
    (None if not needed).

    The kwargs are `prompt_embeds` and `negative_prompt_embeds` (plus the pooled pair for SDXL and SD3)
    for all `images` images, with `num_images_per_prompt=1`: pass them instead of `prompt`,
    `negative_prompt` and `clip_skip`, over your own kwargs (`{**yours, **these}`). (SD3's pipeline does
    not repeat embeddings it is given, so hayai repeats them for every family alike; the images equal
    diffusers' `num_images_per_prompt=images` with the same generators.) With prompt editing they also
    hold `callback_on_step_end_tensor_inputs`, and the callback must run at the end of every step
    (compose it with your own `callback_on_step_end` and merge the dicts both return). `device` is
    where the text encoders run (default: the pipeline's execution device); the embeddings come back
    there, to be moved to the denoiser's device if that is another one.
    """
    if images < 1:
        raise ValueError(f"images={images} must be at least 1")
    family = Family(family)
    positive = parse_prompt(prompt).schedule(steps)
    negative = parse_prompt(negative_prompt).schedule(steps)
    conditionings = encode_texts(pipe, family, [e.text for e in positive + negative], clip_skip, device=device)
    first_positive = positive[index_at_step(positive, 0)].text
    first_negative = negative[index_at_step(negative, 0)].text
    kwargs = _embedding_kwargs(family, conditionings[first_positive], conditionings[first_negative])
    kwargs = {name: _repeat(tensor, images) for name, tensor in kwargs.items()}
    kwargs["num_images_per_prompt"] = 1
    if len(positive) == 1 and len(negative) == 1:
        return kwargs, None
    schedule = PromptSchedule(family, positive, negative, conditionings)
    kwargs["callback_on_step_end_tensor_inputs"] = list(schedule.tensor_inputs)
    return kwargs, schedule


def _embedding_kwargs(family: Family, positive: Conditioning, negative: Conditioning) -> dict:
    kwargs = {"prompt_embeds": positive.embeds, "negative_prompt_embeds": negative.embeds}
    if family in (Family.SDXL, Family.SD3):
        kwargs["pooled_prompt_embeds"] = positive.pooled
        kwargs["negative_pooled_prompt_embeds"] = negative.pooled
    return kwargs


def _repeat(tensor, times: int):
    return tensor if times == 1 else tensor.repeat(times, *([1] * (tensor.ndim - 1)))


class PromptSchedule:
    """A `callback_on_step_end` that switches the embeddings where the prompt's text changes.

    At the end of step i it installs the texts in force at step i+1 (0-based; A1111 uses the first
    scheduled text whose end step is >= the step). It replaces the pipeline's concatenated tensors
    ([negative, positive] under classifier-free guidance), repeated for the images of the batch. One
    instance serves any number of pipeline calls with the same kwargs (batches of a run).
    """

    _POOLED_NAME = {Family.SDXL: "add_text_embeds", Family.SD3: "pooled_prompt_embeds"}

    def __init__(
        self,
        family: Family,
        positive: list[ScheduledText],
        negative: list[ScheduledText],
        conditionings: dict[str, Conditioning],
    ) -> None:
        self.family = Family(family)
        self.positive = positive
        self.negative = negative
        self.conditionings = conditionings
        pooled = self._POOLED_NAME.get(self.family)
        # "latents" too: the finite check at the end of every step (generation/execute.py) reads them
        self.tensor_inputs = ("latents", "prompt_embeds") + ((pooled,) if pooled else ())
        self._current = self._indices(0)

    def _indices(self, step: int) -> tuple[int, int]:
        return index_at_step(self.positive, step), index_at_step(self.negative, step)

    def texts_at(self, step: int) -> tuple[str, str]:
        """(prompt text, negative text) in force at 0-based denoising `step`."""
        return (
            self.positive[index_at_step(self.positive, step)].text,
            self.negative[index_at_step(self.negative, step)].text,
        )

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        import torch

        if step == 0:  # a new pipeline call (the next batch) started from the step-0 embeddings
            self._current = self._indices(0)
        wanted = self._indices(step + 1)
        if wanted == self._current:
            return {}
        self._current = wanted
        positive = self.conditionings[self.positive[wanted[0]].text]
        negative = self.conditionings[self.negative[wanted[1]].text]
        guided = pipe.do_classifier_free_guidance
        images = callback_kwargs["prompt_embeds"].shape[0] // (2 if guided else 1)

        def batch(pos, neg, like):  # on the device and in the dtype of the tensor it replaces
            out = torch.cat([_repeat(neg, images), _repeat(pos, images)]) if guided else _repeat(pos, images)
            return out.to(device=like.device, dtype=like.dtype)

        out = {"prompt_embeds": batch(positive.embeds, negative.embeds, callback_kwargs["prompt_embeds"])}
        pooled_name = self._POOLED_NAME.get(self.family)
        if pooled_name:
            out[pooled_name] = batch(positive.pooled, negative.pooled, callback_kwargs[pooled_name])
        return out


# --- the engine's previous entry point -----------------------------------------------------------
