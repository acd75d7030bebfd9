"""Prompt encodings the diffusers pipelines do not make the way A1111 does.

A1111's clip skip N takes the CLIP hidden state N layers from the end, passes it through the final layer
norm, and does so for the prompt and the negative prompt alike. diffusers' SD1/SD2 pipeline applies it to
the prompt only, and reaches the layer norm through `text_encoder.text_model`, which transformers 5's
CLIPTextModel no longer has. So for clip skip > 1 hayai encodes both prompts itself and hands the
pipeline the embeddings. (The prompt-syntax work will move all encoding here.)
"""

from __future__ import annotations

from hayai.models.families import Family

__all__ = ["encode_overrides"]


def encode_overrides(pipe, family: Family, kwargs: dict, clip_skip: int) -> dict:
    """The pipeline kwargs with prompts replaced by embeddings where hayai must encode them itself."""
    if clip_skip <= 1 or family not in (Family.SD1, Family.SD2):
        return kwargs
    kwargs = dict(kwargs)
    prompt, negative = kwargs.pop("prompt"), kwargs.pop("negative_prompt")
    kwargs.pop("clip_skip", None)
    kwargs["prompt_embeds"] = _clip_hidden(pipe, prompt, clip_skip)
    kwargs["negative_prompt_embeds"] = _clip_hidden(pipe, negative, clip_skip)
    return kwargs


def _clip_hidden(pipe, text: str, clip_skip: int):
    import torch

    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    ids = tokenizer(
        text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(encoder.device)
    with torch.no_grad():
        hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
        final_norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers 4 nests it
        return final_norm(hidden).to(encoder.dtype)
