"""What a sweep writes down: one row per cell, the resumable state file, and the CSV/JSON tables.

A sweep folder holds:
    sweep.json     the plan (every cell's request) and its fingerprint
    cells.jsonl    one line per finished cell, appended and flushed as each cell ends: the state a
                   resumed sweep starts from (a line cut short by a kill is ignored)
    images/        the cells' images, "<cell key>-<seed>.png", each with its full metadata
    results.csv    one row per cell, in grid order: every request parameter, the per-phase timings,
    results.json   peak memory, image paths and, for shapes prompts, the demo adherence score
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from hayai.generation.fields import FIELDS
from hayai.generation.timing import PHASES

__all__ = ["CSV_COLUMNS", "csv_columns", "adherence", "append_state", "cell_row", "read_state", "write_csv", "write_json",
           "GENERATION_PHASES"]

GENERATION_PHASES = ("text_encode", "vae_encode", "denoise", "vae_decode", "upscale")  # a cell's "seconds": the work itself, without load/save

_NOT_COLUMNS = {"model_config", "output_dir", "filename_pattern", "image_format", "lora_partial"}
# the request's fields that apply to every kind; those of img2img, inpainting and hires join when a cell is of that kind
_REQUEST_COLUMNS = tuple(f.name for f in FIELDS if not f.kinds and f.name not in _NOT_COLUMNS)
_RESULT_COLUMNS = (
    "model_name", "model_hash", "family", "strategy", "device", "dtype", *(f"{phase}_s" for phase in PHASES), "seconds",
    "seconds_per_step", "peak_memory_bytes", "peak_memory_kind", "adherence", "seeds", "images", "run_id",
)
CSV_COLUMNS = ("cell", "x", "y", "z", *_REQUEST_COLUMNS, *_RESULT_COLUMNS)  # a text-to-image sweep's columns


def csv_columns(rows: list[dict]) -> tuple[str, ...]:
    """The columns of a sweep's table: CSV_COLUMNS, plus the fields of the kinds its cells are."""
    kinds = {row["request_kind"] for row in rows if "request_kind" in row}
    extra = tuple(f.name for f in FIELDS if set(f.kinds) & kinds and f.name not in _NOT_COLUMNS)
    return ("cell", "x", "y", "z", *_REQUEST_COLUMNS, *extra, *_RESULT_COLUMNS)


def adherence(images, prompt: str) -> float | None:
    """The demo model's prompt-adherence score (hayai.demo.adherence): the fraction of the attributes a
    shapes prompt names that the images show, averaged over the images. None when the prompt is not a
    shapes caption (it names no shape)."""
    from hayai.demo.adherence import parse_prompt, score

    if "shape" not in parse_prompt(prompt):
        return None
    fractions = []
    for image in images:
        hits = score(image, prompt)
        fractions.append(sum(hits.values()) / len(hits))
    return round(sum(fractions) / len(fractions), 4) if fractions else None


def cell_row(cell, result, axis_names: dict[str, str]) -> dict:
    """The record of one finished cell. `axis_names` maps "x"/"y"/"z" to the axes in use."""
    request = result.request.to_dict()
    timings = {f"{phase}_s": round(result.timings.get(phase, 0.0), 4) for phase in PHASES}
    seconds = sum(result.timings.get(phase, 0.0) for phase in GENERATION_PHASES)
    passes = result.request.steps * result.request.batch_count
    labels = dict(zip([a for a in ("x", "y", "z") if a in axis_names], cell.labels))
    return {
        "cell": cell.key, "ix": cell.ix, "iy": cell.iy, "iz": cell.iz,
        **{a: labels.get(a, "") for a in ("x", "y", "z")},
        **{name: request[name] for name in request if name not in _NOT_COLUMNS},
        "request": request, "request_kind": result.request.kind,
        "model_name": result.model, "model_hash": result.model_hash[:10], "family": result.family.value,
        "strategy": result.strategy, "device": result.device, "dtype": result.dtype,
        **timings,
        "seconds": round(seconds, 4),
        "seconds_per_step": round(result.timings.get("denoise", 0.0) / passes, 5),
        "peak_memory_bytes": result.peak_memory.peak_bytes, "peak_memory_kind": result.peak_memory.kind,
        "adherence": adherence([image.image for image in result.images], result.request.prompt),
        "seeds": [image.seed for image in result.images],
        "images": [str(image.path) for image in result.images],
        "run_id": result.run_id,
        "warnings": result.warnings,
    }


def append_state(path: Path, row: dict) -> None:
    """Append one finished cell to the state file, on disk before the next cell starts."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_state(path: Path) -> dict[str, dict]:
    """Finished cells by key; a last line cut short by a kill, and cells whose images are gone, are not finished."""
    rows: dict[str, dict] = {}
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("images") and all(Path(p).is_file() for p in row["images"]):
            rows[row["cell"]] = row
    return rows


def _csv_value(value):
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return "" if value is None else value


def write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".csv.partial")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        columns = csv_columns(rows)
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _csv_value(row.get(column)) for column in columns})
    tmp.replace(path)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
