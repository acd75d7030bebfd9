"""Typer options made in one place, so no command copies an option block.

`@request_options("steps", "cfg_scale", ...)` adds the fields' options (flags and help from
`hayai.generation.fields`) to a command, grouped in help panels by the kind they apply to, and hands the
command the values the user set as one dict, `given` (field name -> value, ready for `GenerationRequest`).
`@run_flags()` adds how to run (--allow-pickle, --vram, --strategy, --device, --json, --quiet, --threads) as `flags`.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Optional

import typer

from hayai.errors import RequestError
from hayai.generation.fields import FIELD, FIELDS, RequestField

__all__ = ["request_options", "run_flags", "RunFlags", "COMMON", "IMG2IMG", "INPAINT", "HIRES"]

# the fields of each kind, in table order (the prompt is each command's argument)
COMMON = tuple(f.name for f in FIELDS if not f.kinds and f.name != "prompt")
IMG2IMG = tuple(f.name for f in FIELDS if "img2img" in f.kinds)
INPAINT = tuple(f.name for f in FIELDS if "inpaint" in f.kinds and "img2img" not in f.kinds)
HIRES = tuple(f.name for f in FIELDS if f.kinds == ("hires",))

_PANELS = {("img2img", "inpaint"): "Image to image", ("img2img", "inpaint", "hires"): "Image to image",
           ("inpaint",): "Inpainting", ("hires",): "Hires fix and progressive upscaling"}
_ANNOTATIONS = {"str": Optional[str], "int": Optional[int], "float": Optional[float], "bool": bool,
                "strs": Optional[list[str]], "sizes": Optional[str]}


def _option(spec: RequestField, help_text: str | None, flags: tuple[str, ...] | None = None) -> inspect.Parameter:
    default = False if spec.type == "bool" else None
    option = typer.Option(default, *(flags or spec.flags), help=help_text or spec.help,
                          rich_help_panel=_PANELS.get(spec.kinds))
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


def _extend(command, added: list[inspect.Parameter], bundle: str, collect):
    """`command` with the `added` parameters, after its arguments; `collect(kwargs)` pops them into `bundle`."""
    hints = typing.get_type_hints(command)
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
           for p in inspect.signature(command).parameters.values() if p.name != bundle]
    arguments = [p for p in own if isinstance(p.default, typer.models.ArgumentInfo)]
    parameters = arguments + added + [p for p in own if p not in arguments]

    @functools.wraps(command)
    def wrapper(**kwargs):
        collected = collect(kwargs)  # pops its parameters out of kwargs
        return command(**kwargs, **{bundle: collected})

    del wrapper.__wrapped__  # typer must read the new signature, not follow to the command's
    wrapper.__signature__ = inspect.Signature(parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


def request_options(*names: str, helps: dict[str, str] | None = None, flags: dict[str, tuple[str, ...]] | None = None):
    """Add the options of the request fields `names` to a command that takes `given: dict` (the fields set).

    `helps` and `flags` replace a field's help text or CLI flags in this command."""
    helps, flags = helps or {}, flags or {}
    specs = [FIELD[name] for name in names]

    def collect(kwargs) -> dict:
        given = {}
        for spec in specs:
            value = kwargs.pop(spec.name)
            if value is not None and value is not False:
                given[spec.name] = _value(spec, value)
        return given

    added = [_option(spec, helps.get(spec.name), flags.get(spec.name)) for spec in specs]
    return lambda command: _extend(command, added, "given", collect)


@dataclass(frozen=True)
class RunFlags:
    """How a command runs, the same flags on every command that generates."""

    allow_pickle: bool = False
    vram: str | None = None
    strategy: str | None = None
    device: str | None = None
    as_json: bool = False
    quiet: bool = False
    threads: int | None = None

    def engine(self, **more):
        """The engine these flags ask for (the strategy is its default for every call; `more` are further
        Engine arguments); torch's CPU thread count is set for the process here (--threads, else
        $OMP_NUM_THREADS, else the free cores)."""
        from hayai.cli.output import silence_library_progress
        from hayai.generation.engine import Engine
        from hayai.hardware import parse_size, use_cpu_threads

        use_cpu_threads(self.threads)
        silence_library_progress()
        return Engine(allow_pickle=self.allow_pickle, vram=parse_size(self.vram) if self.vram else None,
                      strategy=self.strategy, device=self.device, **more)

    @property
    def show_progress(self) -> bool:
        return not (self.quiet or self.as_json)


_RUN_FLAGS = {
    "allow_pickle": (bool, typer.Option(False, "--allow-pickle", help="Allow .ckpt/.pt checkpoints (they can run code).")),
    "vram": (Optional[str], typer.Option(None, "--vram", help="Use at most this much GPU memory, e.g. 6GB (a real cap on CUDA).")),
    "strategy": (Optional[str], typer.Option(None, "--strategy", help="Force an execution strategy (see `hayai plan`) instead of the planner's choice.")),
    "device": (Optional[str], typer.Option(None, "--device", help="cpu, cuda or mps \\[the best one here].")),
    "as_json": (bool, typer.Option(False, "--json", help="Print the result as JSON on stdout.")),
    "quiet": (bool, typer.Option(False, "--quiet", "-q", help="No progress, no summary.")),
    "threads": (Optional[int], typer.Option(None, "--threads", help="Torch CPU threads \\[$OMP_NUM_THREADS, else the cores the load average leaves free].")),
}


def run_flags(helps: dict[str, str] | None = None, only: tuple[str, ...] | None = None):
    """Add --allow-pickle, --vram, --strategy, --device, --json, --quiet and --threads (or the `only` ones) to a
    command that takes `flags: RunFlags`."""
    helps = helps or {}
    chosen = {name: flag for name, flag in _RUN_FLAGS.items() if only is None or name in only}
    added = []
    for name, (annotation, option) in chosen.items():
        if name in helps:
            option = typer.Option(option.default, *option.param_decls, help=helps[name])
        added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))

    def collect(kwargs) -> RunFlags:
        return RunFlags(**{name: kwargs.pop(name) for name in chosen})

    return lambda command: _extend(command, added, "flags", collect)
