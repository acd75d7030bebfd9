"""A1111 "infotext": the generation parameters text that stable-diffusion-webui embeds in every image.

Layout (../shared/REFERENCE.md §2)::

    <prompt, possibly several lines>
    Negative prompt: <negative prompt, possibly several lines>
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

The writer and the reader follow A1111's `create_infotext` (modules/processing.py) and
`parse_generation_parameters` (modules/infotext_utils.py), so A1111, Forge, civitai and the usual
readers understand our images, and we understand theirs. Like A1111's reader, `parse_infotext` strips
each prompt line, so leading and trailing spaces of a line do not survive a round trip.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from hayai.errors import RequestError
from hayai.generation.request import GenerationRequest

__all__ = ["Infotext", "format_infotext", "parse_infotext", "request_to_params", "request_from_infotext"]

# A1111's pair pattern: a key (a word character, then words, spaces, '-' or '/'), then either a
# JSON-quoted value or everything up to the next comma.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY_RE = re.compile(r"\w[\w \-/]+")
# what a failed `_PARAM_RE` match at a position scanned: no match can start before its end (see `_find_params`)
_NO_KEY_RE = re.compile(r"\s*(?:\w[\w \-/]*)?")
_SIZE_RE = re.compile(r"(\d+)x(\d+)")
_NEGATIVE = "Negative prompt:"

# keys `request_from_infotext` turns into request fields
_REQUEST_KEYS = ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Clip skip", "Model",
                 "Lora hashes")  # the LoRAs themselves come back through the prompt's <lora:...> tags
# keys `request_to_params` writes itself; `extra` may not repeat them
_STANDARD_KEYS = ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model", "Clip skip", "Version")


@dataclass(frozen=True)
class Infotext:
    prompt: str
    negative_prompt: str
    params: dict[str, str]  # key -> value, unquoted, in the order of the text


def _quote(value: str) -> str:
    """A1111's `quote()`: JSON-quote a value only when it holds a comma, a colon or a newline."""
    if "," not in value and ":" not in value and "\n" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def _unquote(value: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def format_infotext(prompt: str, negative_prompt: str, params: dict[str, object]) -> str:
    """The infotext A1111 would write for these prompts and parameters (None values are left out)."""
    for key in params:
        if not _KEY_RE.fullmatch(key):
            raise ValueError(
                f"infotext key {key!r} cannot be read back: use 2 or more letters, digits, '_', spaces, '-' or '/', "
                "starting with a letter, digit or '_'"
            )
    pairs = ", ".join(f"{key}: {_quote(str(value))}" for key, value in params.items() if value is not None)
    negative = f"\n{_NEGATIVE} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{pairs}".strip()


def _append_line(text: str, line: str) -> str:
    # A1111 joins with "\n" only once the text is non-empty, so leading empty lines vanish
    return f"{text}\n{line}" if text else line


def _find_params(line: str) -> list[tuple[str, str]]:
    """`_PARAM_RE.findall(line)` in linear time.

    findall retries a failed match one character further on, and each try re-reads the same run of
    key characters, so a long line without a colon took quadratic time (100 KB: hours). A failed try
    at `pos` read blanks and then one maximal run of key characters not followed by a colon; every
    try that starts inside that run reads to the same end and fails too, so the next try that can
    succeed starts where the run ends.
    """
    pairs, pos = [], 0
    while pos < len(line):
        match = _PARAM_RE.match(line, pos)
        if match:
            pairs.append(match.groups())
            pos = match.end()
        else:
            pos = max(_NO_KEY_RE.match(line, pos).end(), pos + 1)
    return pairs


def parse_infotext(text: str) -> Infotext:
    """Split an infotext into prompt, negative prompt and parameters, as A1111's reader does."""
    *lines, last = text.strip().split("\n")
    params = _find_params(last)
    if len(params) < 3:
        lines.append(last)
        params = []
    prompt = negative = ""
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE):].strip()
        if in_negative:
            negative = _append_line(negative, line)
        else:
            prompt = _append_line(prompt, line)
    return Infotext(prompt=prompt, negative_prompt=negative, params={key: _unquote(value) for key, value in params})


def _format_number(value: float) -> str:
    """7.0 -> "7", 7.5 -> "7.5": A1111's look, and exact (repr is the shortest string that reads back)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def request_to_params(
    request: GenerationRequest,
    *,
    model_name: str,
    model_hash: str | None,
    version: str,
    extra: dict[str, object] | None = None,
) -> dict[str, object]:
    """A1111's parameters, in A1111's order, for one image of a resolved request.

    The caller passes the image's own seed with `dataclasses.replace(request, seed=...)`.
    `extra` keys (e.g. "Lora hashes") come after the standard ones, before "Version".
    `version` should name hayai ("hayai 0.1.0"): A1111 reads a bare version number below 1.8 as one
    of its own old releases and turns on backward-compatibility settings when re-generating.
    """
    if request.sampler is None or request.width is None or request.height is None or request.seed < 0:
        raise RequestError(
            f"request is not resolved (sampler={request.sampler!r}, width={request.width}, height={request.height}, "
            f"seed={request.seed}); call resolve() first"
        )
    extra = extra or {}
    clash = [key for key in extra if key in _STANDARD_KEYS]
    if clash:
        raise ValueError(f"extra infotext keys {clash} repeat standard keys; pass them through the request instead")
    return {
        "Steps": request.steps,
        "Sampler": request.sampler,
        "Schedule type": request.schedule_type,
        "CFG scale": _format_number(request.cfg_scale),
        "Seed": request.seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model_hash,
        "Model": model_name,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        **extra,
        "Version": version,
    }


def _to_int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise RequestError(f"infotext {key}={value!r} is not an integer") from None


def _to_float(key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise RequestError(f"infotext {key}={value!r} is not a number") from None


def request_from_infotext(info: Infotext) -> tuple[GenerationRequest, dict[str, str]]:
    """The request an infotext describes, and the parameters it did not use (in their order).

    Missing keys keep the request's defaults; old sampler names ("DPM++ 2M Karras") are accepted.
    """
    params = info.params
    fields: dict[str, object] = {"prompt": info.prompt, "negative_prompt": info.negative_prompt}
    if "Steps" in params:
        fields["steps"] = _to_int("Steps", params["Steps"])
    if "Sampler" in params:
        fields["sampler"] = params["Sampler"]
    if "Schedule type" in params:
        fields["schedule_type"] = params["Schedule type"]
    if "CFG scale" in params:
        fields["cfg_scale"] = _to_float("CFG scale", params["CFG scale"])
    if "Seed" in params:
        fields["seed"] = _to_int("Seed", params["Seed"])
    if "Size" in params:
        match = _SIZE_RE.fullmatch(params["Size"])
        if match is None:
            raise RequestError(f"infotext Size={params['Size']!r} is not of the form WIDTHxHEIGHT")
        fields["width"], fields["height"] = int(match[1]), int(match[2])
    if "Clip skip" in params:
        fields["clip_skip"] = _to_int("Clip skip", params["Clip skip"])
    if "Model" in params:
        fields["model"] = params["Model"]
    unused = {key: value for key, value in params.items() if key not in _REQUEST_KEYS}
    return GenerationRequest(**fields), unused
