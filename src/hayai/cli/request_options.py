"""Typer options made from the request field table, so no command copies an option block.

`@request_options("steps", "cfg_scale", ...)` adds the fields' options (flags and help from
`hayai.generation.fields`) to a command, grouped in help panels by the kind they apply to, and hands the
command the values the user set as one dict, `given` (field name -> value, ready for `GenerationRequest`).
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Optional

import typer

from hayai.errors import RequestError
from hayai.generation.fields import FIELD, FIELDS, RequestField

__all__ = ["request_options", "COMMON", "IMG2IMG", "INPAINT", "HIRES"]

# the fields of each kind, in table order (the prompt is each command's argument)
COMMON = tuple(f.name for f in FIELDS if not f.kinds and f.name != "prompt")
IMG2IMG = tuple(f.name for f in FIELDS if "img2img" in f.kinds)
INPAINT = tuple(f.name for f in FIELDS if "inpaint" in f.kinds and "img2img" not in f.kinds)
HIRES = tuple(f.name for f in FIELDS if f.kinds == ("hires",))

_PANELS = {("img2img", "inpaint"): "Image to image", ("img2img", "inpaint", "hires"): "Image to image",
           ("inpaint",): "Inpainting", ("hires",): "Hires fix and progressive upscaling"}
_ANNOTATIONS = {"str": Optional[str], "int": Optional[int], "float": Optional[float], "bool": bool,
                "strs": Optional[list[str]], "sizes": Optional[str]}


def _option(spec: RequestField, help_text: str | None) -> inspect.Parameter:
    default = False if spec.type == "bool" else None
    option = typer.Option(default, *spec.flags, help=help_text or spec.help, rich_help_panel=_PANELS.get(spec.kinds))
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=_ANNOTATIONS[spec.type])


def _value(spec: RequestField, value):
    if spec.type == "strs":
        return tuple(value)
    if spec.type == "sizes":
        try:
            return tuple(int(part) for part in value.replace(" ", "").split(","))
        except ValueError:
            raise RequestError(f"{spec.flags[0]} {value!r} must be sizes separated by commas, e.g. 512,768,1024") from None
    return value


def request_options(*names: str, helps: dict[str, str] | None = None):
    """Add the options of the request fields `names` to a command that takes `given: dict`."""
    helps = helps or {}
    specs = [FIELD[name] for name in names]

    def decorate(command):
        hints = typing.get_type_hints(command)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(command).parameters.values() if p.name != "given"]
        arguments = [p for p in own if isinstance(p.default, typer.models.ArgumentInfo)]
        options = [p for p in own if p not in arguments]
        parameters = arguments + [_option(spec, helps.get(spec.name)) for spec in specs] + options

        @functools.wraps(command)
        def wrapper(**kwargs):
            given = {}
            for spec in specs:
                value = kwargs.pop(spec.name)
                if value is not None and value is not False:
                    given[spec.name] = _value(spec, value)
            return command(**kwargs, given=given)

        del wrapper.__wrapped__  # typer must read the new signature, not follow to the command's
        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate
