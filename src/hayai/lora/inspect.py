"""What a LoRA file is, without a model: format, rank, alpha, what it targets, base family, training data.

The base family comes from the training metadata when kohya wrote it (`ss_base_model_version`,
`modelspec.architecture`, `ss_v2`), else from the names (SD3's `joint_blocks` / `lora_te3`, SDXL's
`lora_te2`), else from the cross-attention width (768 SD1, 1024 SD2, 2048 SDXL). Trigger words are
the most frequent caption tags of `ss_tag_frequency`, plus the class names of kohya's `N_name` folders.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hayai.lora.formats import DENOISER, LayerWeights, a1111_lora_hash, lora_hashes, read_lora_file, split_layers
from hayai.models.families import Family

__all__ = ["LoraInfo", "detect_lora_family", "family_from_metadata", "inspect_lora", "trigger_words"]

_TRAINING_KEYS = (
    "ss_output_name", "ss_sd_model_name", "ss_base_model_version", "ss_v2", "ss_network_module", "ss_network_dim",
    "ss_network_alpha", "ss_network_args", "ss_resolution", "ss_num_train_images", "ss_num_reg_images", "ss_num_epochs",
    "ss_epoch", "ss_steps", "ss_max_train_steps", "ss_learning_rate", "ss_unet_lr", "ss_text_encoder_lr",
    "ss_optimizer", "ss_lr_scheduler", "ss_seed", "ss_clip_skip", "ss_mixed_precision", "ss_noise_offset",
    "ss_min_snr_gamma", "ss_training_started_at", "ss_training_finished_at", "modelspec.architecture",
    "modelspec.title", "modelspec.trigger_phrase", "modelspec.description",
)
_MODELSPEC_FAMILY = (
    ("stable-diffusion-v1", Family.SD1),
    ("stable-diffusion-v2", Family.SD2),
    ("stable-diffusion-xl", Family.SDXL),
    ("stable-diffusion-3", Family.SD3),
    ("flux", Family.FLUX),
)
_CROSS_ATTENTION_FAMILY = {768: Family.SD1, 1024: Family.SD2, 2048: Family.SDXL}
_REPEATS_FOLDER = re.compile(r"^\d+_(.+)$")  # kohya's "10_name": 10 repeats of class "name"


@dataclass
class LoraInfo:
    path: Path
    format: str
    family: Family | None
    family_source: str | None  # "metadata", "names", "shapes" or None
    layers: int
    ranks: list[int]
    alphas: list[float] | None  # None: no alpha stored (scale 1)
    components: dict[str, int]  # layers per component ("denoiser", "text_encoder", ...)
    modules: list[str]  # the layer names as the file writes them
    size_bytes: int
    sha256: str
    short_hash: str  # A1111's "Lora hashes" value
    training: dict[str, str] = field(default_factory=dict)  # ss_* and modelspec.* entries
    trigger_words: list[str] = field(default_factory=list)
    stray_keys: list[tuple[str, str]] = field(default_factory=list)  # keys that are not LoRA layers, and why

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "format": self.format, "family": self.family.value if self.family else None,
            "family_source": self.family_source, "layers": self.layers, "ranks": self.ranks, "alphas": self.alphas,
            "components": self.components, "modules": self.modules, "size_bytes": self.size_bytes,
            "sha256": self.sha256, "short_hash": self.short_hash, "training": self.training,
            "trigger_words": self.trigger_words, "stray_keys": [{"key": k, "reason": r} for k, r in self.stray_keys],
        }


def family_from_metadata(metadata: dict[str, str]) -> Family | None:
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return Family.SDXL
    if version.startswith("sd3"):
        return Family.SD3
    if version.startswith("flux"):
        return Family.FLUX
    if version.startswith("sd_v2") or metadata.get("ss_v2") == "True":
        return Family.SD2
    if version.startswith("sd_v1"):
        return Family.SD1
    architecture = metadata.get("modelspec.architecture", "")
    for prefix, family in _MODELSPEC_FAMILY:
        if architecture.startswith(prefix):
            return family
    return None


def detect_lora_family(layers: list[LayerWeights], metadata: dict[str, str]) -> tuple[Family | None, str | None]:
    """(family, how it was told) for a LoRA's layers and header metadata."""
    family = family_from_metadata(metadata)
    if family is not None:
        return family, "metadata"
    names = [layer.module for layer in layers]
    components = {layer.component for layer in layers}
    if "text_encoder_3" in components or any("joint_blocks" in n or "context_block" in n or "add_q_proj" in n for n in names):
        return Family.SD3, "names"
    if any("double_blocks" in n or "single_transformer_blocks" in n for n in names):
        return Family.FLUX, "names"
    if "text_encoder_2" in components:
        return Family.SDXL, "names"
    for layer in layers:
        if layer.component == DENOISER and re.search(r"attn2[._]to_k$", layer.module):
            family = _CROSS_ATTENTION_FAMILY.get(int(layer.down.shape[1]))
            if family is not None:
                return family, "shapes"
    return None, None


def trigger_words(metadata: dict[str, str], limit: int = 10) -> list[str]:
    """Likely trigger words: kohya folder class names, then the most frequent caption tags (tags of at most
    three words found in two captions or more: a sentence caption, unique to its image, is no trigger)."""
    words: list[str] = []
    phrase = metadata.get("modelspec.trigger_phrase")
    if phrase:
        words.append(phrase)
    try:
        frequency = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except json.JSONDecodeError:
        return words
    counts: Counter = Counter()
    for folder, tags in frequency.items() if isinstance(frequency, dict) else ():
        match = _REPEATS_FOLDER.match(str(folder))
        if match and match.group(1).strip() not in words:
            words.append(match.group(1).strip())
        if isinstance(tags, dict):
            counts.update({str(tag).strip(): int(n) for tag, n in tags.items() if str(tag).strip()})
    for tag, count in counts.most_common():
        if len(words) >= limit or count < 2:
            break
        if tag not in words and len(tag.split()) <= 3:
            words.append(tag)
    return words[:limit]


def inspect_lora(path: Path) -> LoraInfo:
    """Read a LoRA file and describe it (no model needed)."""
    lora = read_lora_file(Path(path))
    layers, stray = split_layers(lora)
    family, source = detect_lora_family(layers, lora.metadata)
    alphas = sorted({layer.alpha for layer in layers if layer.alpha is not None})
    components = Counter(layer.component or "unknown (PEFT: decided by the model)" for layer in layers)
    sha256, data_hash = lora_hashes(lora.path)
    training = {key: lora.metadata[key] for key in _TRAINING_KEYS if key in lora.metadata}
    return LoraInfo(
        path=lora.path,
        format=lora.format,
        family=family,
        family_source=source,
        layers=len(layers),
        ranks=sorted({layer.rank for layer in layers}),
        alphas=alphas or None,
        components=dict(components),
        modules=[layer.module for layer in layers],
        size_bytes=lora.path.stat().st_size,
        sha256=sha256,
        short_hash=a1111_lora_hash(lora.metadata, lambda: data_hash),
        training=training,
        trigger_words=trigger_words(lora.metadata),
        stray_keys=stray,
    )
