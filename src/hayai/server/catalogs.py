"""The model and LoRA catalogs as A1111's API lists them, and the names a request may use.

A1111 names a checkpoint by its title, "file.safetensors [hash10]"; clients switch models by posting a
title to /options. The hash is the one A1111 shows (the first 10 hex digits of the file's SHA-256), taken
from hayai's hash cache: listing never reads a multi-GB file (a title without a hash is what A1111 shows
for a file it has not hashed yet either).
"""

from __future__ import annotations

from hayai.errors import ModelNotFoundError
from hayai.models.builtin import BUILTIN_MODEL_NAME
from hayai.models.catalog import ARCH_PREFIX, Catalog, builtin_source

__all__ = ["sd_models", "title_of", "check_model", "loras"]


def _entries(catalog: Catalog) -> list[dict]:
    rows = []
    for entry in catalog.entries():
        if entry.problem is not None:
            continue
        sha256 = catalog.store.cached_sha256(entry.path) if entry.kind == "single_file" else None
        name = entry.path.name if entry.kind == "single_file" else entry.name
        rows.append({"name": name, "model_name": entry.name, "sha256": sha256, "filename": str(entry.path)})
    builtin = builtin_source()
    if builtin is not None:
        rows.append({"name": BUILTIN_MODEL_NAME, "model_name": BUILTIN_MODEL_NAME, "sha256": None,
                     "filename": str(builtin.path)})
    return rows


def sd_models(catalog: Catalog) -> list[dict]:
    """GET /sdapi/v1/sd-models: [{title, model_name, hash, sha256, filename, config}]."""
    return [{"title": _title(row), "model_name": row["model_name"], "hash": row["sha256"][:10] if row["sha256"] else None,
             "sha256": row["sha256"], "filename": row["filename"], "config": None} for row in _entries(catalog)]


def _title(row: dict) -> str:
    return f"{row['name']} [{row['sha256'][:10]}]" if row["sha256"] else row["name"]


def title_of(catalog: Catalog, model: str | None) -> str:
    """The A1111 title of the model a name means (the default model for None)."""
    source = catalog.resolve(model)
    if source.kind == "architecture":
        return source.name
    for row in _entries(catalog):
        if row["filename"] == str(source.path):
            return _title(row)
    return source.name


def check_model(catalog: Catalog, name: str) -> None:
    """Refuse, before a job is queued, a model name the server's catalog does not list."""
    if name.startswith(ARCH_PREFIX):
        catalog.resolve(name)  # a known architecture, or ModelNotFoundError
        return
    title = name.rsplit(" [", 1)[0] if name.endswith("]") else name
    rows = _entries(catalog)
    if any(title in (row["name"], row["model_name"]) for row in rows):
        return
    if len(name) >= 8 and all(c in "0123456789abcdef" for c in name.lower()) and any(
            row["sha256"] and row["sha256"].startswith(name.lower()) for row in rows):
        return
    titles = ", ".join(_title(row) for row in rows) or "none"
    raise ModelNotFoundError(f"model {name!r} is not in the server's catalog; GET /sdapi/v1/sd-models lists: {titles}")


def loras(store) -> list[dict]:
    """GET /sdapi/v1/loras: [{name, alias, path, metadata}] as A1111's Lora extension lists them."""
    from hayai.lora.catalog import list_loras

    rows = []
    for entry in list_loras(store):
        if entry.problem is not None:
            continue
        rows.append({"name": entry.name, "alias": entry.alias or entry.name, "path": str(entry.path),
                     "metadata": dict(entry.metadata)})  # (read once, by the listing)
    return rows
