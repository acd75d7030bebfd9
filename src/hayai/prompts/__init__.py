"""A1111 prompt syntax for hayai: parsing, token chunking, weighted embeddings, prompt checks.

    from hayai.prompts import parse_prompt
    parsed = parse_prompt("(masterpiece:1.2), a cat [sitting:running:0.5] BREAK garden <lora:style:0.7>")
    parsed.loras                 # (LoraTag(name='style', te_weight=0.7, unet_weight=0.7, ...),)
    parsed.text_without_loras    # the text the encoders see
    parsed.schedule(steps=20)    # [ScheduledText(10, '... sitting ...'), ScheduledText(20, '... running ...')]

Encoding for a pipeline: `hayai.generation.encoding.prompt_kwargs`.
"""

from __future__ import annotations

from hayai.prompts.check import PromptReport, check_prompt, load_tokenizers, pipeline_tokenizers
from hayai.prompts.parser import BREAK, Fragment, LoraTag, ParsedPrompt, ScheduledText, parse_attention, parse_prompt

__all__ = [
    "BREAK",
    "Fragment",
    "LoraTag",
    "ParsedPrompt",
    "PromptReport",
    "ScheduledText",
    "check_prompt",
    "load_tokenizers",
    "parse_attention",
    "parse_prompt",
    "pipeline_tokenizers",
]
