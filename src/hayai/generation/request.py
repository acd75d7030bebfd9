"""The generation request: every knob of a text-to-image run, validated when it is made.

A request is plain data. It is checked twice: on construction for what needs no model (types,
ranges, names), and by `resolve()` against the model's family (sampler kind, size multiples,
clip skip), which also fills the defaults that depend on the model and draws a random seed. The
resolved request is what gets logged and embedded in every image, so it reproduces the run exactly.
"""

from __future__ import annotations

import dataclasses
import random
import string
from dataclasses import dataclass, fields
from typing import Any

from hayai.errors import RequestError
from hayai.generation.samplers import (
    SAMPLERS,
    SCHEDULE_TYPES,
    check_sampler,
    default_sampler,
    resolve_schedule_type,
    split_legacy_sampler_name,
)
from hayai.models.families import FAMILY_INFO, Family

__all__ = ["GenerationRequest", "IMAGE_FORMATS", "MAX_SEED"]

IMAGE_FORMATS = ("png", "jpg", "webp")
MAX_SEED = 2**32 - 1  # A1111 seeds are 32-bit
MAX_SIDE = 8192
DEFAULT_FILENAME_PATTERN = "{index:05d}-{seed}"


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    model: str | None = None  # catalog name, path, or hub id; None: the default model
    model_config: str | None = None  # single-file checkpoints: a diffusers folder with the component configs
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str | None = None  # A1111 name; None: the family's default ("DPM++ 2M", or "Euler" for flow models)
    schedule_type: str = "Automatic"  # A1111 schedule type; "Automatic" = the sampler's own
    width: int | None = None  # None: the model's native size
    height: int | None = None
    seed: int = -1  # -1 draws a random seed; image i of the run gets seed + i (as A1111)
    batch_size: int = 1  # images per denoising pass
    batch_count: int = 1  # passes
    clip_skip: int = 1  # A1111 meaning: 1 = last CLIP layer, 2 = the one before, ...
    output_dir: str | None = None  # None: $HAYAI_HOME/outputs
    filename_pattern: str = DEFAULT_FILENAME_PATTERN
    image_format: str = "png"
    loras: tuple[str, ...] = ()  # "NAME", "NAME:W" or "NAME:TE_W:UNET_W"; <lora:...> tags in the prompt work too
    lora_partial: bool = False  # apply a LoRA whose keys do not all match the model (warn instead of failing)

    def __post_init__(self) -> None:
        _check_type(self, "prompt", str)
        _check_type(self, "negative_prompt", str)
        for name in ("steps", "seed", "batch_size", "batch_count", "clip_skip"):
            _check_type(self, name, int)
        _check_type(self, "cfg_scale", (int, float))
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise RequestError(f"model={self.model!r} must be a non-empty name, path or hub id")
        if not 1 <= self.steps <= 1000:
            raise RequestError(f"steps={self.steps} must be between 1 and 1000")
        if not 0.0 <= self.cfg_scale <= 100.0:
            raise RequestError(f"cfg_scale={self.cfg_scale} must be between 0 and 100")
        if not (self.seed == -1 or 0 <= self.seed <= MAX_SEED):
            raise RequestError(f"seed={self.seed} must be -1 (random) or between 0 and {MAX_SEED}")
        if not 1 <= self.batch_size <= 64:
            raise RequestError(f"batch_size={self.batch_size} must be between 1 and 64")
        if not 1 <= self.batch_count <= 10000:
            raise RequestError(f"batch_count={self.batch_count} must be between 1 and 10000")
        if not 1 <= self.clip_skip <= 12:
            raise RequestError(f"clip_skip={self.clip_skip} must be between 1 (no skip) and 12")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                _check_type(self, name, int)
                if not 64 <= value <= MAX_SIDE:
                    raise RequestError(f"{name}={value} must be between 64 and {MAX_SIDE}")
        if self.sampler is not None:
            base, legacy_schedule = split_legacy_sampler_name(self.sampler)
            if base not in SAMPLERS:
                raise RequestError(f"sampler={self.sampler!r} is unknown; choose one of: {', '.join(SAMPLERS)}")
            if legacy_schedule is not None:
                # "DPM++ 2M Karras" is A1111's old spelling of sampler + schedule type
                if self.schedule_type not in ("Automatic", legacy_schedule):
                    raise RequestError(
                        f"sampler={self.sampler!r} already names schedule {legacy_schedule!r}, "
                        f"but schedule_type={self.schedule_type!r}"
                    )
                object.__setattr__(self, "sampler", base)
                object.__setattr__(self, "schedule_type", legacy_schedule)
        if self.schedule_type not in SCHEDULE_TYPES:
            raise RequestError(
                f"schedule_type={self.schedule_type!r} is unknown; choose one of: {', '.join(SCHEDULE_TYPES)}"
            )
        if self.image_format not in IMAGE_FORMATS:
            raise RequestError(f"image_format={self.image_format!r} must be one of: {', '.join(IMAGE_FORMATS)}")
        _check_pattern(self.filename_pattern)
        _check_loras(self)

    # -- derived ---------------------------------------------------------------------------------
    @property
    def total_images(self) -> int:
        return self.batch_size * self.batch_count

    def seeds(self) -> list[int]:
        """Seed of every image of the run, in order (needs a resolved seed)."""
        if self.seed < 0:
            raise RequestError("seed=-1 has not been resolved yet; call resolve() first")
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.total_images)]

    def resolve(self, family: Family, native_size: tuple[int, int], rng: random.Random | None = None) -> GenerationRequest:
        """Check the request against the model's family and fill what depends on it.

        `native_size` is the model's own (width, height), used when none was asked for.
        """
        info = FAMILY_INFO[family]
        sampler = self.sampler or default_sampler(info.flow_matching)
        check_sampler(sampler, info.flow_matching)
        schedule = resolve_schedule_type(sampler, self.schedule_type, info.flow_matching)
        width = self.width or native_size[0]
        height = self.height or native_size[1]
        for name, value in (("width", width), ("height", height)):
            if value % info.size_multiple:
                lower = value - value % info.size_multiple
                raise RequestError(
                    f"{name}={value} must be a multiple of {info.size_multiple} for {family.value} models "
                    f"(try {lower} or {lower + info.size_multiple})"
                )
        if self.clip_skip > 1 and not info.clip_skip:
            raise RequestError(f"clip_skip={self.clip_skip} does not apply to {family.value} models; leave it at 1")
        seed = self.seed if self.seed >= 0 else (rng or random.SystemRandom()).randint(0, MAX_SEED)
        return dataclasses.replace(
            self, sampler=sampler, schedule_type=schedule, width=width, height=height, seed=seed
        )

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RequestError(f"unknown request field(s): {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
        if "prompt" not in data:
            raise RequestError("the request has no 'prompt' field")
        return cls(**data)


def _check_loras(request: GenerationRequest) -> None:
    """LoRA specs and prompt tags are checked here, so a typo fails before any model loads."""
    from hayai.errors import HayaiError
    from hayai.lora.apply import LoraSpec
    from hayai.prompts.parser import parse_prompt

    if isinstance(request.loras, list):  # JSON round trips give lists
        object.__setattr__(request, "loras", tuple(request.loras))
    if not isinstance(request.loras, tuple) or not all(isinstance(item, str) for item in request.loras):
        raise RequestError(f"loras={request.loras!r} must be a list of 'NAME', 'NAME:W' or 'NAME:TE_W:UNET_W'")
    if not isinstance(request.lora_partial, bool):
        raise RequestError(f"lora_partial={request.lora_partial!r} must be true or false")
    try:
        for text in request.loras:
            LoraSpec.parse(text)
    except HayaiError as error:
        raise RequestError(f"loras: {error}") from None
    parse_prompt(request.prompt)
    parse_prompt(request.negative_prompt)


def _check_type(request: GenerationRequest, name: str, kind: type | tuple[type, ...]) -> None:
    value = getattr(request, name)
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RequestError(f"{name}={value!r} must be of type {expected}")


_PATTERN_FIELDS = {
    "index": 0, "seed": 0, "batch_index": 0, "prompt": "", "model": "", "steps": 0,
    "cfg": 0.0, "sampler": "", "width": 0, "height": 0, "date": "", "time": "",
}


def _check_pattern(pattern: str) -> None:
    import re

    longest, longest_name = 200, 240  # characters of a pattern or of any width or precision in it; of a name it makes
    if not isinstance(pattern, str) or not pattern:
        raise RequestError(f"filename_pattern={pattern!r} must be a non-empty string")
    if len(pattern) > longest:
        raise RequestError(f"filename_pattern={pattern[:40]!r}... is {len(pattern)} characters long; use at most {longest}")
    if "/" in pattern or "\\" in pattern or pattern.startswith("."):
        raise RequestError(f"filename_pattern={pattern!r} must name a file, not a path (no '/', no leading '.')")
    allowed = ", ".join("{" + name + "}" for name in _PATTERN_FIELDS)
    try:
        parts = [(field, spec) for _, field, spec, _ in string.Formatter().parse(pattern) if field is not None]
    except ValueError as exc:
        raise RequestError(f"filename_pattern={pattern!r} is not valid ({exc}); it may use {allowed}") from None
    names = [field for field, _ in parts]
    for name in names:
        if name not in _PATTERN_FIELDS:  # also refuses attribute and index access: {prompt.upper}, {index[0]}
            raise RequestError(f"filename_pattern={pattern!r} uses {{{name}}}; it may use {allowed}")
    for name, spec in parts:  # checked before formatting: {index:0200000000d} would build a 200 MB name
        if "{" in spec or any(int(number) > longest for number in re.findall(r"[0-9]+", spec)):
            raise RequestError(f"filename_pattern={pattern!r}: {{{name}:{spec}}} is not allowed; a width or precision must be a number up to {longest}")
    try:
        pattern.format(**_PATTERN_FIELDS)
        stem = pattern.format(index=10**9, seed=MAX_SEED, batch_index=63, prompt="p" * 60, model="m" * 60, steps=1000,
                              cfg=1 / 3, sampler="s" * 60, width=MAX_SIDE, height=MAX_SIDE, date="2000-01-01", time="000000")
    except (ValueError, TypeError) as exc:  # a format spec that does not fit the field, e.g. {prompt:05d}
        raise RequestError(f"filename_pattern={pattern!r} is not valid ({exc})") from None
    if len(stem) > longest_name:
        raise RequestError(f"filename_pattern={pattern!r} can make names of {len(stem)} characters; keep them under {longest_name}")
    if "index" not in names and "seed" not in names:
        raise RequestError(f"filename_pattern={pattern!r} must contain {{index}} or {{seed}} so files do not overwrite each other")
