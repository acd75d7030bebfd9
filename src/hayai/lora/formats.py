"""LoRA files: reading them, telling their format, and grouping their tensors into layers.

Formats (REFERENCE.md §5):
- `kohya` (A1111, ComfyUI, kohya-ss sd-scripts): `lora_unet_<name>.lora_down.weight` / `.lora_up.weight`
  / `.alpha`, prefixes `lora_unet`, `lora_te` (SD1/2), `lora_te1`/`lora_te2`/`lora_te3`; `<name>` is the
  module path with `.` -> `_` (SD1 in diffusers names, SDXL and SD3 in SAI/LDM names).
- `diffusers` (`pytorch_lora_weights.safetensors`): `unet.<path>.lora_A.weight` / `.lora_B.weight`, also
  `transformer.`, `text_encoder.`, `text_encoder_2.`; alpha from `.alpha` keys or the
  `lora_adapter_metadata` header entry, else scale 1.
- `diffusers-legacy`: the older `.lora.down.weight` / `processor.to_q_lora.down.weight` names.
- `peft` (`adapter_model.safetensors` from PEFT's `save_pretrained`): `base_model.model.<path>.lora_A.weight`,
  alpha from the `adapter_config.json` beside it.

A layer's update is `weight * alpha / rank * (up @ down)` (rank = rows of down; PEFT's rsLoRA divides by
sqrt(rank)). Keys that are not part of a complete layer are returned as stray, never dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hayai.errors import ModelError, ModelNotFoundError, damaged_safetensors

__all__ = [
    "FORMATS",
    "LayerWeights",
    "LoraError",
    "LoraFile",
    "LoraNotFoundError",
    "detect_format",
    "lora_hashes",
    "read_lora_file",
    "split_layers",
]

FORMATS = ("kohya", "diffusers", "diffusers-legacy", "peft")
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
DENOISER = "denoiser"  # stands for `unet` or `transformer`, whichever the model has

_KOHYA_PREFIX = re.compile(r"^(lora_unet|lora_te[123]?)_(.+)$")
_KOHYA_COMPONENT = {
    "lora_unet": DENOISER,
    "lora_te": "text_encoder",
    "lora_te1": "text_encoder",
    "lora_te2": "text_encoder_2",
    "lora_te3": "text_encoder_3",
}
_KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
# LyCORIS and friends: reported as unsupported rather than skipped.
_UNSUPPORTED = {
    "hada_": "LyCORIS LoHa",
    "lokr_": "LyCORIS LoKr",
    "oft_": "OFT",
    "dora_scale": "DoRA",
    "lora_magnitude_vector": "DoRA",
    "lora_mid": "LoCon with Tucker decomposition",
    ".diff": "full weight difference",
    "w_norm": "norm-layer training",
    "b_norm": "norm-layer training",
}
_DIFFUSERS_PARTS = (
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"),
    ("_lora.up.weight", "up"),
    (".alpha", "alpha"),
)
_PEFT_PREFIX = "base_model.model."
_ADAPTER_NAME = re.compile(r"\.lora_([AB])\.[^.]+\.weight$")  # `.lora_A.<adapter>.weight` -> `.lora_A.weight`
_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LoraConfig per component, in the safetensors header


class LoraError(ModelError):
    """A LoRA file cannot be read or does not fit the model. The message names the keys."""


class LoraNotFoundError(LoraError, ModelNotFoundError):
    """No LoRA answers to the name given."""


@dataclass
class LoraFile:
    path: Path
    tensors: dict  # name -> torch.Tensor (CPU)
    metadata: dict[str, str]  # the safetensors header metadata
    format: str
    adapter_config: dict | None = None  # PEFT's adapter_config.json, when beside the file


@dataclass
class LayerWeights:
    """One low-rank update as stored: `module` is the file's name for the layer (format-specific)."""

    key: str  # the key prefix shared by this layer's tensors
    component: str | None  # "denoiser", "text_encoder", ...; None: not said by the file (PEFT)
    module: str
    down: object  # torch.Tensor [rank, in] or [rank, in, kh, kw]
    up: object  # torch.Tensor [out, rank] or [out, rank, 1, 1]
    alpha: float | None = None  # None: alpha = rank (scale 1)
    rslora: bool = False
    keys: tuple[str, ...] = field(default=(), repr=False)  # the file keys this layer was built from

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def scale(self, weight: float) -> float:
        """`weight * alpha / rank` in the order PEFT computes it (so fused results match bit for bit)."""
        alpha = self.alpha if self.alpha is not None else self.rank
        return weight * alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def detect_format(keys) -> str:
    """`kohya`, `peft`, `diffusers` or `diffusers-legacy`, from the tensor names alone."""
    keys = list(keys)
    if any(_KOHYA_PREFIX.match(key) for key in keys):
        return "kohya"
    if any(key.startswith(_PEFT_PREFIX) for key in keys):
        return "peft"
    if any(".lora_A." in key or ".lora_B." in key for key in keys):
        return "diffusers"
    if any(key.endswith(suffix) for key in keys for suffix, _ in _DIFFUSERS_PARTS[2:8]):
        return "diffusers-legacy"
    shown = ", ".join(keys[:3]) or "no tensors"
    raise LoraError(f"not a LoRA file: no lora_down/lora_up or lora_A/lora_B keys (first keys: {shown})")


def read_lora_file(path: Path) -> LoraFile:
    """Read a `.safetensors` LoRA (tensors on the CPU) and, for PEFT files, the adapter config beside it."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise LoraError(
            f"{path.name}: only .safetensors LoRA files are read (a pickle file can run code when loaded); "
            "convert it to .safetensors first"
        )
    if not path.is_file():
        raise LoraNotFoundError(f"LoRA file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception:  # safetensors raises its own error types for a damaged file
        raise LoraError(damaged_safetensors(path)) from None
    fmt = detect_format(tensors)
    config = None
    config_path = path.with_name("adapter_config.json")
    if fmt == "peft" and config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LoraError(f"{config_path} cannot be read as JSON ({exc})") from None
    return LoraFile(path, tensors, metadata, fmt, config)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's alpha_pattern lookup: a key matches the module path exactly or as a dotted suffix/regex."""
    for pattern, value in (patterns or {}).items():
        if module == pattern or re.fullmatch(rf"(.*\.)?{pattern}", module):
            return value
    return default


def _component_configs(lora: LoraFile) -> dict[str | None, dict]:
    """LoraConfig fields per component: diffusers' header metadata, or PEFT's adapter_config.json."""
    if lora.format == "peft":
        return {None: lora.adapter_config or {}}
    raw = lora.metadata.get(_METADATA_KEY)
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LoraError(f"{lora.path.name}: header entry {_METADATA_KEY!r} is not JSON ({exc})") from None
    configs: dict[str | None, dict] = {}
    for key, value in packed.items():
        component, _, name = key.partition(".")
        configs.setdefault(component, {})[name] = value
    return configs


def _normalize_diffusers_module(module: str, component: str | None) -> str:
    module = module.replace(".processor.", ".")
    text = component is not None and component.startswith("text_encoder")
    renames = (
        {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
        if text
        else {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
    )
    head, _, last = module.rpartition(".")
    if last.endswith("_lora") and last[: -len("_lora")] in renames:
        last = renames[last[: -len("_lora")]]
        module = f"{head}.{last}" if head else last
    return module


def _split_key(lora: LoraFile, key: str) -> tuple[str, str | None, str, str] | None:
    """(layer key, component, module name, part) of one tensor name, or None if it is not a LoRA part."""
    if lora.format == "kohya":
        base, _, suffix = key.partition(".")
        match = _KOHYA_PREFIX.match(base)
        if not match or suffix not in _KOHYA_PARTS:
            return None
        return base, _KOHYA_COMPONENT[match.group(1)], match.group(2), _KOHYA_PARTS[suffix]
    name = _ADAPTER_NAME.sub(r".lora_\1.weight", key)
    for suffix, part in _DIFFUSERS_PARTS:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            break
    else:
        return None
    if lora.format == "peft":
        if not base.startswith(_PEFT_PREFIX):
            return None
        return base, None, base[len(_PEFT_PREFIX) :], part
    first, _, rest = base.partition(".")
    component, module = (first, rest) if first in COMPONENTS and rest else (DENOISER, base)
    if component in ("unet", "transformer"):
        component = DENOISER
    return base, component, _normalize_diffusers_module(module, component), part


def split_layers(lora: LoraFile) -> tuple[list[LayerWeights], list[tuple[str, str]]]:
    """The file's layers, and its stray keys with the reason each does not form part of a layer."""
    groups: dict[str, dict] = {}
    stray: list[tuple[str, str]] = []
    for key in lora.tensors:
        parsed = _split_key(lora, key)
        if parsed is None:
            variant = next((name for marker, name in _UNSUPPORTED.items() if marker in key), None)
            reason = f"unsupported LoRA variant ({variant})" if variant else "not a LoRA weight name"
            stray.append((key, reason))
            continue
        base, component, module, part = parsed
        group = groups.setdefault(base, {"component": component, "module": module, "keys": []})
        if part in group:
            stray.append((key, f"a second {part} for layer {base}"))
            continue
        group[part] = lora.tensors[key]
        group["keys"].append(key)
    configs = _component_configs(lora)
    layers: list[LayerWeights] = []
    for base, group in groups.items():
        if "down" not in group or "up" not in group:
            missing = "up" if "down" in group else "down"
            stray.extend((key, f"layer {base} has no {missing} weight") for key in group["keys"])
            continue
        config = _config_for(configs, group["component"])
        alpha = float(group["alpha"].item()) if "alpha" in group else None
        if alpha is None and config:
            alpha = _pattern_value(config.get("alpha_pattern"), group["module"], config.get("lora_alpha"))
            alpha = float(alpha) if alpha is not None else None
        layers.append(
            LayerWeights(
                base, group["component"], group["module"], group["down"], group["up"], alpha,
                bool(config.get("use_rslora", False)), tuple(group["keys"]),
            )
        )
    return layers, stray


def _config_for(configs: dict, component: str | None) -> dict:
    if component == DENOISER:
        return configs.get("unet") or configs.get("transformer") or {}
    return configs.get(component) or {}


def a1111_lora_hash(metadata: dict[str, str], data_hash: Callable[[], str]) -> str:
    """A LoRA's `Lora hashes` value as A1111 writes it (12 hex digits): the `sshs_model_hash` its header
    stores, else its tensor-data hash (`data_hash()`, the second of `lora_hashes`, only called then)."""
    return (metadata.get("sshs_model_hash") or data_hash())[:12]


def lora_hashes(path: Path) -> tuple[str, str]:
    """(sha256 of the whole file, sha256 of its tensor data) in one read.

    The second is the "addnet" hash that A1111 shows as `Lora hashes` (first 12 hex digits) for
    .safetensors files (`extensions-builtin/Lora/network.py`, `modules/hashes.py`): it skips the
    header, so editing the metadata does not change it.
    """
    whole, data = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as file:
        head = file.read(8)
        whole.update(head)
        header = file.read(int.from_bytes(head, "little"))
        whole.update(header)
        while chunk := file.read(1 << 20):
            whole.update(chunk)
            data.update(chunk)
    return whole.hexdigest(), data.hexdigest()
