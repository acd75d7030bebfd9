"""Applying several LoRAs to a loaded pipeline by patching its weights, with an exact way back.

Method (A1111's): for every layer a LoRA touches, a copy of the base weight is kept on the CPU and the
layer's weight becomes `base + sum_i weight_i * alpha_i / rank_i * (up_i @ down_i)`, summed in the order
the LoRAs were given, in float32, then cast to the weight's dtype. So:
- a step costs what it costs without LoRAs (no adapter layers in the forward pass);
- the result equals diffusers' `load_lora_weights` + `set_adapters` + `fuse_lora` bit for bit in float32
  (the same update formula as PEFT's merge), and diffusers' unfused adapters up to float rounding;
- weight 0 skips a LoRA; an empty set copies the base weights back, bit for bit;
- changing weights recomputes only the layers the changed LoRAs touch; the same set again does nothing.

Every key of every file must land on a layer of the model, else `apply` raises `LoraError` naming the
keys (`partial=True` applies the rest and reports them instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hayai.lora.convert import ModuleIndex, Target, map_layers, target_up
from hayai.lora.formats import LayerWeights, LoraError, a1111_lora_hash, lora_hashes, read_lora_file, split_layers
from hayai.models.families import Family

__all__ = ["AppliedLora", "LoraSet", "LoraSpec"]

_SHOWN_KEYS = 12


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA to apply: a name (catalog name or path) and its weights.

    `weight` applies to both parts; `te_weight` / `unet_weight` override it for the text encoders and
    for the denoiser (U-Net or SD3 transformer), as A1111's `<lora:NAME:TE_W:UNET_W>`.
    """

    name: str
    weight: float = 1.0
    te_weight: float | None = None
    unet_weight: float | None = None

    def __post_init__(self) -> None:
        import math

        if not isinstance(self.name, str) or not self.name.strip():
            raise LoraError(f"LoRA name={self.name!r} must be a non-empty string")
        for what in ("weight", "te_weight", "unet_weight"):
            value = getattr(self, what)
            if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise LoraError(f"LoRA {self.name!r}: {what}={value!r} must be a finite number")

    @property
    def text_encoder_weight(self) -> float:
        return float(self.te_weight if self.te_weight is not None else self.weight)

    @property
    def denoiser_weight(self) -> float:
        return float(self.unet_weight if self.unet_weight is not None else self.weight)

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """`NAME`, `NAME:W` or `NAME:TE_W:UNET_W` (the CLI's `--lora`); a Windows drive colon is kept."""
        parts = text.rsplit(":", 2)
        numbers: list[float] = []
        while len(parts) > 1 and len(numbers) < 2:
            try:
                numbers.insert(0, float(parts[-1]))
            except ValueError:
                break
            parts.pop()
        name = ":".join(parts)
        if not numbers:
            return cls(name)
        if len(numbers) == 1:
            return cls(name, numbers[0])
        return cls(name, numbers[1], te_weight=numbers[0], unet_weight=numbers[1])

    @classmethod
    def from_tag(cls, tag) -> LoraSpec:
        """From a prompt's `LoraTag` (hayai.prompts)."""
        return cls(tag.name, tag.unet_weight, te_weight=tag.te_weight, unet_weight=tag.unet_weight)

    def to_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, "te_weight": self.te_weight, "unet_weight": self.unet_weight}

    @classmethod
    def from_dict(cls, data: dict) -> LoraSpec:
        return cls(data["name"], data.get("weight", 1.0), data.get("te_weight"), data.get("unet_weight"))


@dataclass(frozen=True)
class AppliedLora:
    """A LoRA in effect: what was asked, which file, and what it touched."""

    name: str  # as the request named it (A1111 writes this name in "Lora hashes")
    path: Path
    sha256: str  # of the whole file
    short_hash: str  # A1111's "Lora hashes" value: 12 hex digits of the tensor-data hash
    format: str
    te_weight: float
    unet_weight: float
    layers: int  # layers of the file that landed
    modules: int  # model layers it updates (a fused qkv layer updates three)
    unmatched: tuple[str, ...] = ()  # keys that landed nowhere (only with partial=True)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "path": str(self.path), "sha256": self.sha256, "short_hash": self.short_hash,
            "format": self.format, "te_weight": self.te_weight, "unet_weight": self.unet_weight,
            "layers": self.layers, "modules": self.modules, "unmatched": list(self.unmatched),
        }


@dataclass
class _LoadedLora:
    path: Path
    stamp: tuple[int, int]  # (size, mtime_ns) when read
    format: str
    mapped: list[tuple[LayerWeights, tuple[Target, ...]]]
    unmatched: list[tuple[str, str]]
    total_keys: int
    sha256: str
    short_hash: str


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _delta(layer: LayerWeights, target: Target, scale: float, weight):
    """PEFT's `get_delta_weight` for this layer and target, in float32 on the weight's device."""
    import torch

    down = layer.down.to(device=weight.device, dtype=torch.float32)
    up = target_up(layer, target).to(device=weight.device, dtype=torch.float32)
    if down.ndim == 2:
        update = up.reshape(up.shape[0], -1) @ down
    elif tuple(down.shape[2:]) == (1, 1):
        update = (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3)
    else:
        update = torch.nn.functional.conv2d(down.transpose(0, 1), up).transpose(0, 1)
    update = update * scale
    return update.reshape(weight.shape)


class LoraSet:
    """The LoRAs patched into one pipeline. Call `apply` with the full set wanted before each run."""

    def __init__(self, pipe, family: Family, resolver: Callable[[str], Path] | None = None) -> None:
        """`resolver` turns a spec's name into a file (default: a path, else `find_lora` in the catalog)."""
        self.pipe = pipe
        self.family = Family(family)
        self.index = ModuleIndex(pipe, self.family)
        self.resolver = resolver or _default_resolver
        self.applied: list[AppliedLora] = []
        self._files: dict[Path, _LoadedLora] = {}
        self._backups: dict[Target, object] = {}  # (component, module) -> CPU copy of the base weight
        self._state: tuple = ()  # ((path, te_weight, unet_weight), ...) in effect

    # -- the public operations ---------------------------------------------------------------------
    def apply(self, specs: list[LoraSpec], *, partial: bool = False) -> list[AppliedLora]:
        """Make exactly `specs` be in effect, touching only the layers that change."""
        resolved = [(spec, Path(self.resolver(spec.name)).resolve()) for spec in specs]
        seen: dict[Path, str] = {}
        for spec, path in resolved:
            if path in seen:
                raise LoraError(f"LoRA {spec.name!r} is asked for twice (also as {seen[path]!r}): {path}")
            seen[path] = spec.name
        stale = {path for path, lora in self._files.items() if not path.is_file() or lora.stamp != _stamp(path)}
        loaded = [self._load(path, spec.name, partial) for spec, path in resolved]
        reread = {path for path in stale if path in self._files}  # changed on disk while in effect
        state = tuple((path, spec.text_encoder_weight, spec.denoiser_weight) for spec, path in resolved)
        if state != self._state or reread:
            self._patch(state, changed=self._changed_paths(self._state, state) | reread)
            self._state = state
        self._drop_unused_files({path for path, *_ in state})
        self.applied = [self._applied(spec, lora, partial) for (spec, _), lora in zip(resolved, loaded)]
        return list(self.applied)

    def clear(self) -> None:
        """Restore every patched layer to its base weight."""
        self.apply([])

    # -- loading -----------------------------------------------------------------------------------
    def _load(self, path: Path, name: str, partial: bool) -> _LoadedLora:
        cached = self._files.get(path)
        if cached is None or cached.stamp != _stamp(path):
            lora = read_lora_file(path)
            layers, stray = split_layers(lora)
            mapped, unmatched = map_layers(layers, lora.format, self.index)
            sha256, data_hash = lora_hashes(path)
            short = a1111_lora_hash(lora.metadata, lambda: data_hash)
            cached = _LoadedLora(path, _stamp(path), lora.format, mapped, stray + unmatched, len(lora.tensors), sha256, short)
            self._files[path] = cached
        if cached.unmatched and not partial:
            raise LoraError(self._unmatched_message(name, cached))
        return cached

    def _unmatched_message(self, name: str, lora: _LoadedLora) -> str:
        shown = "; ".join(f"{key} ({why})" for key, why in lora.unmatched[:_SHOWN_KEYS])
        more = f"; and {len(lora.unmatched) - _SHOWN_KEYS} more" if len(lora.unmatched) > _SHOWN_KEYS else ""
        return (
            f"LoRA {name!r} ({lora.path.name}, {lora.format} format): {len(lora.unmatched)} of its {lora.total_keys} "
            f"keys match no layer of this {self.family.value} model, so it would only partly apply: {shown}{more}. "
            "Is it a LoRA for another model family? To apply the keys that do match, pass --lora-partial "
            "(Python: partial=True)."
        )

    def _drop_unused_files(self, keep: set[Path]) -> None:
        for path in list(self._files):
            if path not in keep:
                del self._files[path]

    def _applied(self, spec: LoraSpec, lora: _LoadedLora, partial: bool) -> AppliedLora:
        warnings = ()
        if lora.unmatched and partial:
            warnings = (f"LoRA {spec.name!r}: {len(lora.unmatched)} keys matched no layer and were skipped",)
        return AppliedLora(
            spec.name, lora.path, lora.sha256, lora.short_hash, lora.format, spec.text_encoder_weight,
            spec.denoiser_weight, len(lora.mapped), sum(len(t) for _, t in lora.mapped),
            tuple(k for k, _ in lora.unmatched), warnings,
        )

    # -- patching ----------------------------------------------------------------------------------
    @staticmethod
    def _changed_paths(old: tuple, new: tuple) -> set[Path]:
        old_weights = {path: rest for path, *rest in old}
        new_weights = {path: rest for path, *rest in new}
        changed = {p for p in old_weights.keys() | new_weights.keys() if old_weights.get(p) != new_weights.get(p)}
        common_old = [p for p, *_ in old if p in new_weights]
        common_new = [p for p, *_ in new if p in old_weights]
        if common_old != common_new:  # the order of the sum changed: recompute what they share
            changed.update(common_new)
        return changed

    def _patch(self, state: tuple, changed: set[Path]) -> None:
        import torch

        in_use = {_module_key(t) for path, *_ in state for _, targets in self._files[path].mapped for t in targets}
        touched = {key for key in self._backups if key not in in_use}  # to restore
        for path in changed:
            lora = self._files.get(path)
            if lora is not None:
                touched.update(_module_key(t) for _, targets in lora.mapped for t in targets)
        contributions: dict[Target, list] = {key: [] for key in touched}
        for path, te_weight, unet_weight in state:
            for layer, targets in self._files[path].mapped:
                for target in targets:
                    key = _module_key(target)
                    weight = te_weight if target.is_text_encoder else unet_weight
                    if key in contributions and weight != 0:
                        contributions[key].append((layer, target, layer.scale(weight)))
        with torch.no_grad():
            for key, parts in contributions.items():
                self._write(key, parts)

    def _write(self, key: Target, parts: list) -> None:
        """Set one layer's weight to its base plus `parts`; with no parts, restore the base exactly."""
        import torch

        param = self.index.weight(key)
        if param.device.type == "meta":
            raise LoraError(
                f"{key.component}.{key.module} has no weights in memory (sequential CPU offload?): "
                "apply LoRAs before enabling offloading"
            )
        if key not in self._backups:
            if not parts:
                return
            self._backups[key] = param.detach().to("cpu", copy=True)
        base = self._backups[key]
        if not parts:
            param.copy_(base)
            del self._backups[key]
            return
        total = base.to(device=param.device, dtype=torch.float32, copy=True)
        for layer, target, scale in parts:
            total += _delta(layer, target, scale, param)
        param.copy_(total)


def _module_key(target: Target) -> Target:
    return Target(target.component, target.module)


def _default_resolver(name: str) -> Path:
    from hayai.lora.catalog import find_lora

    return find_lora(name)
