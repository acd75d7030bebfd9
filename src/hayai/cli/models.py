"""`hayai models list|add|info|remove`."""

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
