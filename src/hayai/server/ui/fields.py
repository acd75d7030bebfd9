"""Form controls made from the one table of request fields (`hayai.generation.fields.FIELDS`) and from
TrainConfig's fields: label, default, range, choices and help come from there, never from a copy here."""

from __future__ import annotations

import dataclasses

import gradio as gr

from hayai.generation.fields import FIELD

__all__ = ["control", "train_control"]

_LABELS = {"cfg_scale": "CFG scale", "negative_prompt": "Negative prompt", "schedule_type": "Schedule type",
           "batch_size": "Batch size", "batch_count": "Batch count", "hr_scale": "Hires upscale by",
           "hr_upscaler": "Hires upscaler", "hr_steps": "Hires steps", "denoising_strength": "Denoising strength",
           "mask_blur": "Mask blur", "masked_content": "Masked content", "inpaint_only_masked": "Inpaint only masked",
           "inpaint_padding": "Only-masked padding", "resize_mode": "Resize mode", "mask_invert": "Invert mask"}


def _help(text: str) -> str:
    return text.replace("\\[", "[")


def control(name: str, **overrides):
    """The control for request field `name` (its `elem_id` is `name`, which the browser tests use)."""
    spec = FIELD[name]
    label = overrides.pop("label", _LABELS.get(name) or spec.label or name.replace("_", " ").capitalize())
    common = {"info": _help(spec.help), "elem_id": name}
    for key in ("info", "elem_id"):
        if key in overrides:
            common[key] = overrides.pop(key)
    common["label"] = label
    if "choices" in overrides or spec.choices:
        choices = list(overrides.pop("choices", spec.choices))
        value = overrides.pop("value", spec.default if spec.default in choices else (choices[0] if choices else None))
        return gr.Dropdown(choices=choices, value=value, **common, **overrides)
    if spec.type == "bool":
        return gr.Checkbox(value=overrides.pop("value", bool(spec.default)), **common, **overrides)
    if spec.type in ("int", "float"):
        return gr.Number(value=overrides.pop("value", spec.default), minimum=spec.minimum, maximum=spec.maximum,
                         precision=0 if spec.type == "int" else None, **common, **overrides)
    return gr.Textbox(value=overrides.pop("value", spec.default or ""), **common, **overrides)


def train_control(name: str, **overrides):
    """The control for TrainConfig field `name`, with its help text and default."""
    from hayai.training import TrainConfig
    from hayai.training.config import CHOICES

    field = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    common = {"label": overrides.pop("label", name.replace("_", " ")), "info": field.metadata.get("help", ""),
              "elem_id": f"train_{name}"}
    default = overrides.pop("value", field.default)
    kind = str(field.type)
    if name in CHOICES:
        return gr.Dropdown(choices=list(CHOICES[name]), value=default, **common, **overrides)
    if "bool" in kind:
        return gr.Checkbox(value=bool(default), **common, **overrides)
    if "int" in kind or "float" in kind:
        return gr.Number(value=default, precision=0 if "int" in kind else None, **common, **overrides)
    return gr.Textbox(value=default or "", **common, **overrides)
