"""LoRAs an image names under a name this machine does not know: found by A1111's "Lora hashes".

A1111 does the same when an infotext is pasted (its lora extension rewrites each `<lora:alias:` whose alias
is unknown to the file with that hash), so an image still reproduces after its LoRA files were renamed or
came from someone else's folder.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

from hayai.lora.apply import LoraSpec
from hayai.lora.formats import LoraNotFoundError

__all__ = ["parse_lora_hashes", "relink_loras"]

FindLora = Callable[..., Path]  # hayai.lora.find_lora(name, short_hash=None) with the store bound


def parse_lora_hashes(value: str | None) -> dict[str, str]:
    """A1111's "Lora hashes" value, "name: 12hex, name2: 12hex", as {name: hash}; pieces without a hash are skipped."""
    pairs = (piece.rsplit(":", 1) for piece in (value or "").split(",") if ":" in piece)
    return {name.strip(): short.strip().lower() for name, short in pairs if name.strip() and short.strip()}


def relink_loras(request, hashes: dict[str, str], find: FindLora) -> tuple[object, list[str]]:
    """`request` (a GenerationRequest) with every LoRA that `find` does not know by name, but does by its
    hash in `hashes`, renamed to the file found; and a warning for each. The rest is left as it is: a LoRA
    found by neither fails later, in the engine, with the error that names it."""
    from hayai.prompts.parser import parse_prompt

    tags = parse_prompt(request.prompt).loras
    names = [tag.name for tag in tags] + [LoraSpec.parse(item).name for item in request.loras]
    renamed: dict[str, str] = {}
    warnings: list[str] = []
    for name in dict.fromkeys(names):
        short = hashes.get(name.replace(":", "").replace(",", ""))  # the names as A1111 writes them
        if not short or _found(find, name):
            continue
        try:
            path = find(name, short_hash=short)
        except LoraNotFoundError:
            continue
        renamed[name] = path.stem if _found(find, path.stem, path) else str(path)
        warnings.append(f"LoRA {name!r} is not in the catalog under that name; using {path}, whose hash {short} the image records")
    if not renamed:
        return request, warnings
    prompt = request.prompt
    for tag in tags:
        if tag.name in renamed:
            new_tag = re.sub(r"^(<\w+:\s*)" + re.escape(tag.name), lambda m: m.group(1) + renamed[tag.name], tag.text)
            prompt = prompt.replace(tag.text, new_tag)
    loras = tuple(
        renamed[spec.name] + item[len(spec.name):] if spec.name in renamed else item
        for item, spec in ((item, LoraSpec.parse(item)) for item in request.loras)
    )
    return dataclasses.replace(request, prompt=prompt, loras=loras), warnings


def _found(find: FindLora, name: str, expected: Path | None = None) -> bool:
    try:
        path = find(name)
    except LoraNotFoundError:
        return False
    return expected is None or path == expected
