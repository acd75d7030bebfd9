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
from hayai.generation.fields import FIELDS, INFOTEXT_DEFAULTS
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

# keys `request_to_params` writes itself; `extra` may not repeat them
_STANDARD_KEYS = ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model", "Clip skip",
                  "Version", *(f.infotext for f in FIELDS if f.infotext))
# booleans A1111 writes as words
_WORDS = {"mask_invert": ("Inpaint masked", "Inpaint not masked"), "inpaint_only_masked": ("Whole picture", "Only masked")}
_HIRES_RESIZE = "Hires resize"


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

    The caller passes the image's own seed with `dataclasses.replace(request, seed=...)`. The keys of
    the field table (`hayai.generation.fields`) are written for the fields that apply to the request's
    kind, and like A1111 only when they differ from what A1111's reader assumes for a missing key.
    `extra` keys (e.g. "Lora hashes") come after them, before "Version". `version` should name hayai
    ("hayai 0.1.0"): A1111 reads a bare version number below 1.8 as one of its own old releases and
    turns on backward-compatibility settings when re-generating.
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
    params: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": request.sampler,
        "Schedule type": request.schedule_type,
        "CFG scale": _format_number(request.cfg_scale),
        "Seed": request.seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model_hash,
        "Model": model_name,
    }
    kind = request.kind
    for spec in sorted(FIELDS, key=lambda f: f.name != "denoising_strength"):  # A1111 writes it before Clip skip
        if spec.infotext and spec.infotext not in params and (not spec.kinds or kind in spec.kinds):
            params[spec.infotext] = _written(spec, request)
    if kind == "hires" and (request.hr_resize_x or request.hr_resize_y):
        params["Hires upscale"] = None
        params[_HIRES_RESIZE] = "x".join(map(str, request.passes()[-1]))
    return {**params, **extra, "Version": version}


def _written(spec, request: GenerationRequest) -> str | None:
    """The infotext value of one field, or None where A1111 leaves the key out."""
    value = getattr(request, spec.name)
    if value is None:
        return None
    if spec.name in _WORDS:
        text = _WORDS[spec.name][bool(value)]
    elif spec.type == "sizes":
        text = ",".join(map(str, value)) if value else None
    elif spec.type == "float":
        text = _format_number(value)
    else:
        text = str(value)
    if spec.name == "inpaint_padding" and not request.inpaint_only_masked:
        return None
    if spec.name in ("hr_sampler", "hr_prompt", "hr_negative_prompt"):
        first = {"hr_sampler": request.sampler, "hr_prompt": request.prompt, "hr_negative_prompt": request.negative_prompt}
        return None if value == first[spec.name] else text
    if (spec.name == "hr_steps" and value == 0) or (spec.name == "hr_scale" and request.progressive):
        return None
    if INFOTEXT_DEFAULTS.get(spec.infotext) == text:
        return None
    return text


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


def _read(spec, key: str, value: str):
    if spec.name in _WORDS:
        words = _WORDS[spec.name]
        if value not in words:
            raise RequestError(f"infotext {key}={value!r} must be {words[0]!r} or {words[1]!r}")
        return value == words[1]
    if spec.type == "int":
        return _to_int(key, value)
    if spec.type == "float":
        return _to_float(key, value)
    if spec.type == "sizes":
        return tuple(_to_int(key, part.strip()) for part in value.split(","))
    return value


def request_from_infotext(info: Infotext) -> tuple[GenerationRequest, dict[str, str]]:
    """The request an infotext describes, and the parameters it did not use (in their order).

    Missing keys keep the request's defaults (A1111's reader's defaults, which are the same); old
    sampler names ("DPM++ 2M Karras") are accepted. An image-to-image infotext gives the settings but
    not the input image, which A1111 does not record.
    """
    params = info.params
    fields: dict[str, object] = {"prompt": info.prompt, "negative_prompt": info.negative_prompt}
    # the LoRAs themselves come back through the prompt's <lora:...> tags; "Version" names the program that wrote it
    used = {"Size", _HIRES_RESIZE, "Lora hashes", "Version"}
    for spec in FIELDS:
        if spec.infotext and spec.infotext in params:
            fields[spec.name] = _read(spec, spec.infotext, params[spec.infotext])
            used.add(spec.infotext)
    if "Size" in params:
        fields["width"], fields["height"] = _size(params["Size"], "Size")
    if _HIRES_RESIZE in params:
        fields["hr_resize_x"], fields["hr_resize_y"] = _size(params[_HIRES_RESIZE], _HIRES_RESIZE)
    if "Hires upscaler" in params and not ({"Hires upscale", _HIRES_RESIZE, "Progressive"} & set(params)):
        fields.pop("hr_upscaler")  # A1111 writes the upscaler of a txt2img run with hires fix off, too
    unused = {key: value for key, value in params.items() if key not in used}
    return GenerationRequest(**fields), unused


def _size(value: str, key: str) -> tuple[int, int]:
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise RequestError(f"infotext {key}={value!r} is not of the form WIDTHxHEIGHT")
    return int(match[1]), int(match[2])
