"""Writing generated images with their records, and reading a record back into a request."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
from pathlib import Path

from hayai import __version__
from hayai.errors import HayaiError
from hayai.generation.imagefile import read_image_metadata, save_image
from hayai.generation.infotext import format_infotext, parse_infotext, request_from_infotext, request_to_params
from hayai.generation.request import GenerationRequest
from hayai.generation.results import GeneratedImage
from hayai.lora.catalog import find_lora
from hayai.lora.relink import parse_lora_hashes, relink_loras

__all__ = ["finish_image", "request_from_image", "slug"]

_WHERE_FILES_GO = ("output_dir", "filename_pattern")  # request fields a file read back never sets


def finish_image(image, request: GenerationRequest, model: dict, seed: int, position: int, batch_index: int,
                 out_dir: Path, index: int, save: bool, runtime: dict, *, loras=(), requested_loras=()) -> GeneratedImage:
    """The infotext of one image and, when saving, the file (atomic) with the run's full record.

    `model` holds name, sha256, family, path, hub_id; `runtime` the device, dtype and strategy; `loras`
    the LoRAs in effect (A1111's "Lora hashes"), `requested_loras` those asked for outside the prompt,
    which the infotext's prompt carries as tags, as A1111 writes them, so the infotext alone reproduces the run.
    """
    from hayai.lora import lora_hashes_infotext, prompt_with_lora_tags

    image_request = dataclasses.replace(request, seed=seed)
    params = request_to_params(image_request, model_name=model["name"], model_hash=model["sha256"][:10],
                               version=f"hayai {__version__}", extra={"Lora hashes": lora_hashes_infotext(list(loras))})
    infotext = format_infotext(prompt_with_lora_tags(request.prompt, list(requested_loras)), request.negative_prompt, params)
    if not save:
        return GeneratedImage(None, seed, position, infotext, image)
    meta = {
        "version": __version__,
        "request": request.to_dict(),  # the whole run: its seed is the run's first seed
        "image": {"index": position, "seed": seed, "batch_index": batch_index},
        "model": model,
        "loras": [applied.to_dict() for applied in loras],
        **runtime,
    }
    now = _dt.datetime.now()
    stem = request.filename_pattern.format(
        index=index, seed=seed, batch_index=batch_index, prompt=slug(request.prompt), model=slug(model["name"]),
        steps=request.steps, cfg=request.cfg_scale, sampler=slug(request.sampler), width=request.width,
        height=request.height, date=now.strftime("%Y-%m-%d"), time=now.strftime("%H%M%S"),
    )
    path = save_image(image, out_dir / f"{stem}.{request.image_format}", infotext=infotext, hayai_meta=meta, next_free=True)
    return GeneratedImage(path, seed, position, infotext, image)


def request_from_image(image_path: Path, *, store=None) -> tuple[GenerationRequest, set[int] | None, list[str]]:
    """The request that made an image, and which image of that run it was.

    hayai images carry the whole run, so the same batch is re-run and only that image kept (a batch
    of 4 is not bit-identical to 4 batches of 1 on every device). For images from A1111 and other
    tools only the infotext exists: the image is re-made alone from its own seed. A LoRA the catalog
    (in `store`) does not know by the image's name for it is looked up by its "Lora hashes" entry.
    """
    meta = read_image_metadata(Path(image_path))
    request, keep, warnings = _request_from_metadata(meta, image_path)
    hashes = parse_lora_hashes(parse_infotext(meta.infotext).params.get("Lora hashes") if meta.infotext else None)
    if hashes:
        request, relinked = relink_loras(request, hashes, functools.partial(find_lora, store=store))
        warnings.extend(relinked)
    return request, keep, warnings


def _request_from_metadata(meta, image_path: Path) -> tuple[GenerationRequest, set[int] | None, list[str]]:
    warnings: list[str] = []
    if meta.hayai is not None:
        _check_record(meta.hayai, image_path)
        # where files go is the user's choice (their options still apply), never the file's
        data = {key: value for key, value in meta.hayai["request"].items() if key not in _WHERE_FILES_GO}
        image = meta.hayai["image"]
        batch_size = data["batch_size"]
        batch_start = image["index"] - image["batch_index"]
        data.update(seed=data["seed"] + batch_start, batch_count=1)
        model = meta.hayai["model"]
        if model.get("path") and Path(model["path"]).exists():
            data["model"] = model["path"]
        elif model.get("hub_id"):
            data["model"] = model["hub_id"]
        keep = {image["batch_index"]} if batch_size > 1 else None
        return GenerationRequest.from_dict(data), keep, warnings
    if meta.infotext is None:
        raise HayaiError(f"{image_path} carries no generation parameters (no A1111 infotext, no hayai data)")
    request, unused = request_from_infotext(parse_infotext(meta.infotext))
    if unused:
        warnings.append(f"ignored infotext keys hayai does not apply yet: {', '.join(sorted(unused))}")
    return request, None, warnings


def _check_record(record, image_path: Path) -> None:
    """The parts of a hayai record `_request_from_metadata` reads, so an edited one fails in one line."""
    needed = {"request": ("seed", "batch_size"), "image": ("index", "batch_index"), "model": ()}
    for part, keys in needed.items():
        value = record.get(part) if isinstance(record, dict) else None
        if not isinstance(value, dict):
            raise HayaiError(f"{image_path}: its hayai record has no {part!r} entry, so it was edited or damaged; "
                             "`hayai info` shows what it holds")
        for key in keys:
            if not isinstance(value.get(key), int) or isinstance(value.get(key), bool):
                raise HayaiError(f"{image_path}: its hayai record has no whole number at {part}.{key}, so it was edited "
                                 "or damaged; `hayai info` shows what it holds")


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe short form of a prompt or name."""
    keep = "".join(c if c.isalnum() or c in "-_" else "_" if c in " ,.;:" else "" for c in text)
    return "_".join(part for part in keep.split("_") if part)[:limit] or "untitled"
