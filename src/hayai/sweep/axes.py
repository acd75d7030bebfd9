"""Sweep axes: which request field an axis changes, and A1111's X/Y/Z plot value syntax. Pure.

An axis is written `NAME=VALUES`, e.g. `steps=5,10,20`, `"CFG Scale=2-8 (+2)"`, `sampler="Euler a,DPM++ 2M"`.
NAME is one of our field names or A1111's axis label, case-insensitive, spaces/underscores/dashes ignored
(`cfg`, `cfg_scale` and `CFG Scale` are the same axis). VALUES is a comma-separated list (CSV: quote a
value that holds a comma); on number axes an item may be a range, as in A1111's X/Y/Z plot:

    1-5          1, 2, 3, 4, 5            (both ends included; 5-1 counts down)
    5-70 (+5)    5, 10, ..., 70           (a step; (-5) counts down)
    1-10 [5]     1, 3, 5, 7, 10           (5 values spread evenly; integer axes truncate, as A1111)
    0.5-2 (+0.5) 0.5, 1.0, 1.5, 2.0       (float axes: CFG Scale, LoRA weight)

A1111 quirks not copied: a step that does not point from the start to the end is an error here (A1111
returns nothing), and a range's end is kept when the steps land on it exactly (A1111's float ranges can
overshoot by one step through rounding).
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from dataclasses import dataclass

from hayai.errors import RequestError
from hayai.generation.fields import FIELDS

__all__ = ["AXES", "Axis", "AxisKind", "find_axis", "parse_axis", "parse_values", "format_value"]


@dataclass(frozen=True)
class AxisKind:
    """One thing a sweep can vary."""

    key: str  # the request field it sets, or "size", "lora_weight", "prompt_sr", "strategy"
    label: str  # A1111's label (what the grid and the chart print)
    type: str  # "int", "float", "str" or "size"
    aliases: tuple[str, ...] = ()
    engine_level: bool = False  # set on the engine (strategy, model), not only on the request: cells are ordered by it


# every request field with an A1111 X/Y/Z label (hayai.generation.fields), then the axes that are not one field
AXES: tuple[AxisKind, ...] = (
    *(AxisKind(f.name, f.label, f.type, f.aliases) for f in FIELDS if f.label and not f.reloads_model),
    AxisKind("size", "Size", "size", ("resolution", "wxh")),
    AxisKind("lora_weight", "LoRA weight", "float", ("lora", "lora_strength")),
    AxisKind("prompt_sr", "Prompt S/R", "str", ("prompt_search_replace", "sr")),
    *(AxisKind(f.name, f.label, f.type, f.aliases, engine_level=True) for f in FIELDS if f.label and f.reloads_model),
    AxisKind("strategy", "Strategy", "str", ("plan", "execution", "execution_strategy"), engine_level=True),
)


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9/]", "", name.lower())


_BY_NAME: dict[str, AxisKind] = {}
for _kind in AXES:
    for _name in (_kind.key, _kind.label, *_kind.aliases):
        _BY_NAME[_normal(_name)] = _kind


def find_axis(name: str) -> AxisKind:
    """The axis `name` means; RequestError naming the known ones otherwise."""
    kind = _BY_NAME.get(_normal(name))
    if kind is not None:
        return kind
    known = ", ".join(f"{k.key} ({k.label})" for k in AXES)
    close = difflib.get_close_matches(_normal(name), list(_BY_NAME), n=1)
    hint = f" (did you mean {_BY_NAME[close[0]].key!r}?)" if close else ""
    raise RequestError(f"axis {name!r} is unknown{hint}; axes: {known}")


@dataclass(frozen=True)
class Axis:
    kind: AxisKind
    values: tuple  # parsed: int, float, str, or (width, height) for size
    text: str  # what the user wrote after '=', for the record

    @property
    def labels(self) -> list[str]:
        return [f"{self.kind.label}: {format_value(self.kind, v)}" for v in self.values]

    def to_dict(self) -> dict:
        return {"axis": self.kind.key, "label": self.kind.label, "values": [_plain(v) for v in self.values], "text": self.text}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def format_value(kind: AxisKind, value) -> str:
    """A value as the grid prints it: 7.0 -> "7", 0.30000000000000004 -> "0.3", (512, 768) -> "512x768"."""
    if kind.type == "size":
        return f"{value[0]}x{value[1]}"
    if isinstance(value, float):
        return f"{round(value, 8):g}"
    return str(value)


def parse_axis(text: str) -> Axis:
    """`NAME=VALUES` -> an Axis with its values parsed (see the module docstring)."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise RequestError(f"axis {text!r} must be NAME=VALUES, e.g. steps=5,10,20 or \"CFG Scale=2-8 (+2)\"")
    kind = find_axis(name.strip())
    return Axis(kind, tuple(parse_values(kind, values)), values.strip())


def _items(text: str) -> list[str]:
    rows = list(csv.reader(io.StringIO(text.strip()), skipinitialspace=True))
    return [item.strip() for row in rows for item in row]


_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"


_RANGE = {
    "int": re.compile(rf"\s*({_INT})\s*-\s*({_INT})\s*(?:\(\s*([+-]\s*\d+)\s*\)|\[\s*(\d+)\s*\])?\s*"),
    "float": re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})\s*(?:\(\s*([+-]\s*(?:\d+(?:\.\d*)?|\.\d+))\s*\)|\[\s*(\d+)\s*\])?\s*"),
}


def _number(kind: AxisKind, text: str):
    cast = int if kind.type == "int" else float
    try:
        return cast(text.replace(" ", ""))
    except ValueError:
        what = "an integer" if kind.type == "int" else "a number"
        raise RequestError(f"{kind.label} axis: {text!r} is not {what} or a range like 1-10, 5-70 (+5), 1-10 [5]") from None


def _expand_range(kind: AxisKind, item: str, match: re.Match) -> list:
    start, end = _number(kind, match.group(1)), _number(kind, match.group(2))
    step_text, count_text = match.group(3), match.group(4)
    if count_text is not None:
        count = int(count_text)
        if count < 1:
            raise RequestError(f"{kind.label} axis: {item!r} asks for {count} values; write at least [1]")
        if count == 1:
            return [start]
        spread = [start + (end - start) * i / (count - 1) for i in range(count)]
        return [int(v) for v in spread] if kind.type == "int" else [round(v, 10) for v in spread]
    step = _number(kind, step_text) if step_text is not None else (1 if end >= start else -1)
    if step == 0 or (end - start) * step < 0:
        raise RequestError(
            f"{kind.label} axis: {item!r} never reaches {format_value(kind, end)} from {format_value(kind, start)} "
            f"in steps of {format_value(kind, step)}; write the step with the sign that points to the end"
        )
    count = int((end - start) / step + 1e-9) + 1
    if count > 10000:
        raise RequestError(f"{kind.label} axis: {item!r} makes {count} values; sweeps of more than 10000 are refused")
    values = [start + i * step for i in range(count)]
    return values if kind.type == "int" else [round(v, 10) for v in values]


def _size(item: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", item)
    if not match:
        raise RequestError(f"Size axis: {item!r} is not WIDTHxHEIGHT, e.g. 512x768")
    return int(match.group(1)), int(match.group(2))


def parse_values(kind: AxisKind, text: str) -> list:
    """The values of one axis, ranges expanded, in the order written."""
    items = _items(text)
    if not items or any(item == "" for item in items):
        raise RequestError(f"{kind.label} axis: {text!r} has an empty value; write values separated by commas")
    values: list = []
    for item in items:
        if kind.type in ("int", "float"):
            match = _RANGE[kind.type].fullmatch(item)
            values += _expand_range(kind, item, match) if match else [_number(kind, item)]
        elif kind.type == "size":
            values.append(_size(item))
        else:
            values.append(item)
    return values
