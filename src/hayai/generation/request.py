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
from hayai.generation.fields import FIELDS, MASKED_CONTENT, RESIZE_MODES, RequestField
from hayai.models.families import FAMILY_INFO, Family
from hayai.speed.presets import KNOBS, check_knobs, preset_knobs

__all__ = ["GenerationRequest", "IMAGE_FORMATS", "MAX_SEED", "round_down_size"]

IMAGE_FORMATS = ("png", "jpg", "webp")
MAX_SEED = 2**32 - 1  # A1111 seeds are 32-bit
MAX_SIDE = 8192
DEFAULT_STEPS = 20  # A1111's UI default (its API's is 50)
DEFAULT_CFG = 7.0
DEFAULT_FILENAME_PATTERN = "{index:05d}-{seed}"


def round_down_size(width: float, height: float, multiple: int) -> tuple[int, int]:
    """(width, height) rounded down to `multiple` (at least one multiple), as A1111 truncates a latent."""
    return max(multiple, int(width) // multiple * multiple), max(multiple, int(height) // multiple * multiple)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    model: str | None = None  # catalog name, path, or hub id; None: the default model
    model_config: str | None = None  # single-file checkpoints: a diffusers folder with the component configs
    steps: int | None = None  # None: the model card's recommendation, else 20
    cfg_scale: float | None = None  # None: the model card's recommendation, else 7
    sampler: str | None = None  # A1111 name; None: the model card's, else the family's ("DPM++ 2M"; flow models "Euler")
    schedule_type: str = "Automatic"  # A1111 schedule type; "Automatic" = the sampler's own (or the card's)
    width: int | None = None  # None: the model's native size (img2img: the input image's)
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
    # image to image: an init image makes it img2img, a mask as well makes it inpainting
    init_image: str | None = None  # a path; the engine keeps a copy by hash in $HAYAI_HOME/inputs
    denoising_strength: float = 0.75  # img2img, inpainting and hires passes
    denoise_steps: str = "a1111"  # how many steps an image-to-image pass runs (fields.DENOISE_STEPS)
    resize_mode: str = "Just resize"  # fields.RESIZE_MODES (A1111's index is accepted too)
    mask: str | None = None  # a path; white = redraw
    mask_blur: int = 4
    mask_invert: bool = False
    masked_content: str = "original"  # fields.MASKED_CONTENT (A1111's index is accepted too)
    inpaint_only_masked: bool = False  # A1111's "Inpaint area: Only masked"
    inpaint_padding: int = 32
    # hires fix: a second pass at hr_scale x the size (or hr_resize_x/y); progressive: a chain of such passes
    hr_scale: float = 1.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_upscaler: str = "Latent"
    hr_steps: int = 0  # 0: `steps`
    hr_sampler: str | None = None  # None: `sampler`
    hr_prompt: str | None = None  # None: `prompt`
    hr_negative_prompt: str | None = None
    progressive: tuple[int, ...] = ()  # the long side of every pass, e.g. (512, 768, 1024)
    # speed levers (hayai.speed): a preset fills the knobs left None when the request is resolved
    speed: str = "exact"  # hayai.speed.presets.PRESETS
    step_cache: int | None = None  # run the deep UNet blocks every N steps, reuse them between (0 or 1: off)
    token_merging: float | None = None  # ToMe ratio of self-attention tokens merged at full latent resolution
    block_cache: float | None = None  # first-block cache threshold (SD3, Flux): skip the later blocks below it (0: off)
    tiny_vae: str | None = None  # a diffusers AutoencoderTiny folder (TAESD) that replaces the model's VAE

    def __post_init__(self) -> None:
        for spec in FIELDS:
            _check_field(self, spec)
        if self.model is not None and not self.model.strip():
            raise RequestError(f"model={self.model!r} must be a non-empty name, path or hub id")
        if not (self.seed == -1 or 0 <= self.seed <= MAX_SEED):
            raise RequestError(f"seed={self.seed} must be -1 (random) or between 0 and {MAX_SEED}")
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
        if self.hr_sampler is not None and split_legacy_sampler_name(self.hr_sampler)[0] not in SAMPLERS:
            raise RequestError(f"hr_sampler={self.hr_sampler!r} is unknown; choose one of: {', '.join(SAMPLERS)}")
        if self.schedule_type not in SCHEDULE_TYPES:
            raise RequestError(
                f"schedule_type={self.schedule_type!r} is unknown; choose one of: {', '.join(SCHEDULE_TYPES)}"
            )
        _check_pattern(self.filename_pattern)
        _check_loras(self)
        _check_image_to_image(self)

    # -- derived ---------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """The pipeline kind that makes this request: "inpaint", "img2img", "hires" or "txt2img"."""
        if self.mask is not None:
            return "inpaint"
        if self.init_image is not None:
            return "img2img"
        if self.hr_scale > 1 or self.hr_resize_x or self.hr_resize_y or self.progressive:
            return "hires"
        return "txt2img"

    @property
    def total_images(self) -> int:
        return self.batch_size * self.batch_count

    def seeds(self) -> list[int]:
        """Seed of every image of the run, in order (needs a resolved seed)."""
        if self.seed < 0:
            raise RequestError("seed=-1 has not been resolved yet; call resolve() first")
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.total_images)]

    def passes(self, size_multiple: int = 8) -> list[tuple[int, int]]:
        """(width, height) of every pass of a resolved request: one, or the hires / progressive chain.

        Sizes are rounded down to the family's `size_multiple` (A1111 truncates the latent the same way).
        """
        width, height = self.width, self.height
        if width is None or height is None:
            raise RequestError("the request's size has not been resolved yet; call resolve() first")

        def fit(w: float, h: float) -> tuple[int, int]:
            return round_down_size(w, h, size_multiple)

        if self.progressive:
            first = self.progressive[0]
            return [(width, height)] + [fit(width * side / first, height * side / first) for side in self.progressive[1:]]
        if self.hr_resize_x or self.hr_resize_y:
            # one side given: keep the aspect ratio (A1111); both: that size
            w = self.hr_resize_x or self.hr_resize_y * width / height
            h = self.hr_resize_y or self.hr_resize_x * height / width
            return [(width, height), fit(w, h)]
        if self.hr_scale > 1:
            return [(width, height), fit(width * self.hr_scale, height * self.hr_scale)]
        return [(width, height)]

    def resolve(self, family: Family, native_size: tuple[int, int], rng: random.Random | None = None,
                recommended: dict | None = None) -> GenerationRequest:
        """Check the request against the model's family and fill what depends on it.

        `native_size` is the size used when none was asked for: the model's own (width, height), or
        for image-to-image the input image's (see `hayai.generation.kinds`). `recommended` (the model
        card's, `hayai.models.card`) fills steps, CFG and sampler left unset; its schedule type comes
        with its sampler only.
        """
        info = FAMILY_INFO[family]
        card = recommended or {}
        steps = self.steps if self.steps is not None else card.get("steps", DEFAULT_STEPS)
        cfg_scale = self.cfg_scale if self.cfg_scale is not None else float(card.get("cfg_scale", DEFAULT_CFG))
        schedule_type = self.schedule_type
        if self.sampler is None and "sampler" in card:
            sampler = card["sampler"]
            if schedule_type == "Automatic":
                schedule_type = card.get("schedule_type", schedule_type)
        else:
            sampler = self.sampler or default_sampler(info.flow_matching)
        check_sampler(sampler, info.flow_matching)
        schedule = resolve_schedule_type(sampler, schedule_type, info.flow_matching)
        if self.hr_sampler is not None:
            check_sampler(split_legacy_sampler_name(self.hr_sampler)[0], info.flow_matching)
        if self.progressive and self.width is None and self.height is None:
            native_size = (self.progressive[0], self.progressive[0])
        width = self.width or native_size[0]
        height = self.height or native_size[1]
        if self.progressive and max(width, height) != self.progressive[0]:
            raise RequestError(f"progressive={','.join(map(str, self.progressive))} starts at {self.progressive[0]}, "
                               f"but the first pass is {width}x{height}; start the list at {max(width, height)}")
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
            self, steps=steps, cfg_scale=cfg_scale, sampler=sampler, schedule_type=schedule, width=width, height=height,
            seed=seed, **self.speed_knobs(info.flow_matching, family.value),
        )

    def speed_knobs(self, flow_matching: bool, family_name: str) -> dict[str, float]:
        """The speed knobs this request runs with: those it sets, the rest from its `speed` preset.

        Every preset but `exact` writes its values into the resolved request, so the record and the
        infotext reproduce the run even after a preset is retuned."""
        own = {name: getattr(self, name) for name in KNOBS}
        check_knobs(own, flow_matching, family_name)
        if self.speed == "exact":  # fills nothing: a knob left unset is off (and absent from the infotext)
            return own
        preset = preset_knobs(self.speed, flow_matching)
        return {name: preset[name] if value is None else value for name, value in own.items()}

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


_TYPES: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "bool": bool}
_INDEXED = {"resize_mode": RESIZE_MODES, "masked_content": MASKED_CONTENT}  # the A1111 API sends their index


def _check_field(request: GenerationRequest, spec: RequestField) -> None:
    """Type, range and choices of one field, from its row in the field table."""
    name, value = spec.name, getattr(request, spec.name)
    if value is None and (spec.default is None or name in ("width", "height")):
        return
    if name in _INDEXED and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(_INDEXED[name]):
        value = _INDEXED[name][value]
        object.__setattr__(request, name, value)
    if spec.type == "sizes":
        if isinstance(value, list):
            value = tuple(value)
            object.__setattr__(request, name, value)
        if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise RequestError(f"{name}={value!r} must be a list of whole numbers, e.g. 512,768,1024")
        _check_progressive(value)
        return
    if spec.type == "strs":
        return  # LoRA specs: `_check_loras`
    kind = _TYPES[spec.type]
    if (isinstance(value, bool) and spec.type != "bool") or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RequestError(f"{name}={value!r} must be of type {expected}")
    if spec.minimum is not None and not spec.minimum <= value <= spec.maximum:
        raise RequestError(f"{name}={value} must be between {spec.minimum:g} and {spec.maximum:g}")
    if spec.choices and value not in spec.choices:
        raise RequestError(f"{name}={value!r} must be one of: {', '.join(spec.choices)}")


def _check_progressive(sizes: tuple[int, ...]) -> None:
    if not sizes:
        return
    shown = ",".join(map(str, sizes))
    if len(sizes) < 2 or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise RequestError(f"progressive={shown} must list two or more growing sizes, e.g. 512,768,1024")
    if not all(64 <= size <= MAX_SIDE for size in sizes):
        raise RequestError(f"progressive={shown}: every size must be between 64 and {MAX_SIDE}")


def _check_image_to_image(request: GenerationRequest) -> None:
    if request.mask is not None and request.init_image is None:
        raise RequestError("mask is set but init_image is not: inpainting needs the image the mask belongs to")
    hires = request.hr_scale > 1 or request.hr_resize_x or request.hr_resize_y
    if request.init_image is not None and (hires or request.progressive):
        raise RequestError("hires fix and progressive upscaling apply to text-to-image; for an input image, "
                           "run img2img at the larger size instead")
    if hires and request.progressive:
        raise RequestError("progressive upscaling is a chain of hires passes: use either progressive or hr_scale/"
                           "hr_resize, not both")


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
