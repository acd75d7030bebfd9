"""`hayai models list|add|info|remove|cache`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from hayai.cli.app import App

from hayai.cli.output import console, escape, format_bytes

app = App(help="The model catalog: hayai's folder, added folders, A1111/ComfyUI installs.", no_args_is_help=True)


def _catalog():
    from hayai.models.catalog import Catalog
    from hayai.store import Store

    return Catalog(Store())


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the models hayai can find."""
    catalog = _catalog()
    entries = catalog.entries()
    if as_json:
        sys.stdout.write(json.dumps([e.to_dict() for e in entries], indent=2) + "\n")
        return
    if not entries:
        folders = ", ".join(str(f) for f in catalog.folders())
        console.print(escape(f"no models found (looked in {folders}); add one with `hayai models add PATH`"))
        from hayai.models.catalog import builtin_source

        if builtin_source() is not None:
            console.print("until then `hayai generate` uses the built-in demo model, hayai-shapes (64x64 shapes, see README)")
        return
    from rich.table import Table

    table = Table("name", "family", "kind", "size", "where", box=None)
    for e in entries:
        family = e.family.value if e.family else f"[red]unusable: {escape(e.problem)}[/]"
        table.add_row(escape(e.name), family, e.kind, format_bytes(e.size_bytes), escape(e.origin))
    console.print(table)


@app.command("add")
def add(path: Path = typer.Argument(..., help="A checkpoint, a diffusers folder, a folder of models, or an A1111/ComfyUI install.")) -> None:
    """Register models where they are (nothing is copied)."""
    console.print(escape(_catalog().add(path)))


@app.command("remove")
def remove(name: str = typer.Argument(..., help="A name or path given to `models add`.")) -> None:
    """Forget an added model or folder. Files are never deleted."""
    console.print(escape(_catalog().remove(name)))


@app.command("info")
def info(
    name: str = typer.Argument(..., help="Model name, path or hub id."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Family, files, size and hash (computed once, then cached) of one model."""
    from hayai.models.catalog import model_hash

    catalog = _catalog()
    source = catalog.resolve(name, allow_pickle=False)
    sha256 = model_hash(catalog.store, source.path)
    data = {
        "name": source.name,
        "title": f"{source.name} [{sha256[:10]}]",
        "family": source.family.value,
        "kind": source.kind,
        "path": str(source.path),
        "hub_id": source.hub_id,
        "sha256": sha256,
        "model_hash": sha256[:10],
    }
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    for key, value in data.items():
        if value is not None:
            console.print(escape(f"{key:>10}: {value}"))


@app.command("cache")
def cache(
    clear_openvino: bool = typer.Option(False, "--clear-openvino", help="Remove every OpenVINO conversion (each is "
                                        "made again when a run needs it)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """What hayai keeps under $HAYAI_HOME/cache: OpenVINO conversions (kept under $HAYAI_OPENVINO_CACHE_GB GiB,
    least recently used removed first) and the placeholder model."""
    from hayai.speed import openvino_cache

    if clear_openvino:
        removed = openvino_cache.clear()
        freed = sum(e.bytes for e in removed)
        if as_json:
            sys.stdout.write(json.dumps({"removed": [e.to_dict() for e in removed], "freed_bytes": freed}, indent=2) + "\n")
        elif removed:
            console.print(escape(f"removed {len(removed)} OpenVINO conversion(s) from {openvino_cache.root()}: "
                                 f"{format_bytes(freed)} freed"), soft_wrap=True)
        else:
            console.print(escape(f"no OpenVINO conversions in {openvino_cache.root()}"), soft_wrap=True)
        return
    data = _cache_listing()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    if not data["openvino"]["conversions"] and not data["other"]:
        console.print(escape(f"nothing in {data['folder']}"), soft_wrap=True)
        return
    openvino = data["openvino"]
    if openvino["conversions"]:
        from rich.table import Table

        cap = (f"cap {format_bytes(openvino['cap_bytes'])}" if openvino["cap_bytes"] is not None
               else openvino["cap_problem"])
        console.print(escape(f"OpenVINO conversions in {openvino['folder']} ({format_bytes(openvino['bytes'])}; {cap}, "
                             f"${openvino_cache.CAP_VARIABLE}):"), soft_wrap=True)
        table = Table("model", "hash", "size", "disk", "converted (UTC)", "last used (UTC)", box=None)
        for e in openvino["conversions"]:
            table.add_row(escape(e["name"] or "?"), e["model_hash"][:12], f"{e['width']}x{e['height']}",
                          format_bytes(e["bytes"]), _when(e["converted_at"]) if not e["unfinished"] else "unfinished",
                          _when(e["last_used"]))
        console.print(table)
    for other in data["other"]:
        console.print(escape(f"{other['what']}: {other['folder']} ({format_bytes(other['bytes'])})"), soft_wrap=True)
    console.print(escape(f"total {format_bytes(data['total_bytes'])}"
                         + ("; `hayai models cache --clear-openvino` removes the OpenVINO conversions"
                            if openvino["conversions"] else "")), soft_wrap=True)


def _when(stamp: str | None) -> str:
    return stamp[:16].replace("T", " ") if stamp else ""


def _cache_listing() -> dict:
    """The cache as `models cache --json` prints it: the OpenVINO conversions, with the model's name where a run
    in the history used that hash, and the other folders hayai made there."""
    from hayai import paths
    from hayai.files import size_bytes
    from hayai.models.catalog import PLACEHOLDER_NAME
    from hayai.speed import openvino_cache

    found = openvino_cache.entries()
    names = {}
    if found:
        from hayai.store import Store

        with Store() as store:
            names = store.model_names(sorted({e.model_hash for e in found}))
    cap, problem = openvino_cache.cap_or_problem()
    conversions = [{**e.to_dict(), "name": names.get(e.model_hash)} for e in found]
    openvino = {"folder": str(openvino_cache.root()), "cap_bytes": cap, "cap_problem": problem,
                "conversions": conversions, "bytes": sum(e.bytes for e in found)}
    placeholder = paths.cache_dir() / PLACEHOLDER_NAME
    other = ([{"what": "the placeholder model (random weights, made when no model is installed)",
               "folder": str(placeholder), "bytes": size_bytes(placeholder)}]
             if placeholder.is_dir() else [])
    return {"folder": str(paths.cache_dir()), "openvino": openvino, "other": other,
            "total_bytes": openvino["bytes"] + sum(o["bytes"] for o in other)}
