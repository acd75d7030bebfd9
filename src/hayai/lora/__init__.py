"""LoRAs: the catalog, file formats (kohya, diffusers, PEFT), and applying several at chosen weights.

    from hayai.lora import LoraSet, LoraSpec
    loras = LoraSet(pipe, family)                       # names resolve through the LoRA catalog
    applied = loras.apply([LoraSpec("style", 0.7), LoraSpec("detail", 0.4)])
    infotext_value = lora_hashes_infotext(applied)      # A1111's "Lora hashes"
    loras.apply([])                                     # base weights back, exactly
"""

from __future__ import annotations

from hayai.lora.apply import AppliedLora, LoraSet, LoraSpec
from hayai.lora.catalog import LoraEntry, find_lora, list_loras, lora_folders, loras_dir
from hayai.lora.formats import FORMATS, LoraError, LoraNotFoundError, lora_hashes, read_lora_file
from hayai.lora.inspect import LoraInfo, inspect_lora
from hayai.lora.relink import parse_lora_hashes, relink_loras

__all__ = [
    "FORMATS",
    "AppliedLora",
    "LoraEntry",
    "LoraError",
    "LoraInfo",
    "LoraNotFoundError",
    "LoraSet",
    "LoraSpec",
    "combine_specs",
    "find_lora",
    "inspect_lora",
    "list_loras",
    "lora_folders",
    "lora_hashes",
    "lora_hashes_infotext",
    "loras_dir",
    "parse_lora_hashes",
    "prompt_with_lora_tags",
    "read_lora_file",
    "relink_loras",
]


def combine_specs(specs: list[LoraSpec], tags) -> list[LoraSpec]:
    """Request specs (CLI `--lora`, API field) followed by prompt tags; the same name twice is an error."""
    combined = list(specs) + [LoraSpec.from_tag(tag) for tag in tags]
    names = [spec.name for spec in combined]
    for name in names:
        if names.count(name) > 1:
            raise LoraError(f"LoRA {name!r} is given {names.count(name)} times (prompt tags and --lora); give it once")
    return combined


def lora_hashes_infotext(applied: list[AppliedLora]) -> str | None:
    """A1111's `Lora hashes` value, "name: 12hex, name2: 12hex" (names without `:` and `,`), or None."""
    parts = [f"{a.name.replace(':', '').replace(',', '')}: {a.short_hash}" for a in applied if a.short_hash]
    return ", ".join(parts) or None


def prompt_with_lora_tags(prompt: str, specs: list[LoraSpec]) -> str:
    """The prompt with a `<lora:...>` tag appended for each spec, as A1111 records LoRAs added outside
    the prompt, so the infotext alone reproduces the run."""
    tags = []
    for spec in specs:
        te, unet = spec.text_encoder_weight, spec.denoiser_weight
        tags.append(f"<lora:{spec.name}:{te:g}>" if te == unet else f"<lora:{spec.name}:{te:g}:{unet:g}>")
    return prompt + "".join(tags)
