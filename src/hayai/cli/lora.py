"""`hayai lora list|inspect`: the LoRA catalog and what a LoRA file holds."""

from __future__ import annotations

import json
import sys

import typer

from hayai.cli.app import App

from hayai.cli.output import console, format_bytes

app = App(help="LoRAs: hayai's folder, and A1111 (models/Lora) / ComfyUI (models/loras) installs.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """LoRA files and where hayai finds them."""


@app.command("list")
def list_loras(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the LoRAs hayai can find (use the name in <lora:NAME:W> or --lora NAME:W)."""
    from rich.markup import escape

    from hayai.lora import list_loras as find_all
    from hayai.lora import lora_folders
    from hayai.store import Store

    store = Store()
    entries = find_all(store)
    if as_json:
        sys.stdout.write(json.dumps([e.to_dict() for e in entries], indent=2) + "\n")
        return
    if not entries:
        folders = ", ".join(str(f) for f, _ in lora_folders(store))
        console.print(escape(f"no LoRAs found (looked in {folders}); put .safetensors files in one of them"))
        return
    from rich.table import Table

    table = Table("name", "size", "folder", "note", box=None)
    for e in entries:
        note = f"[red]unusable: {escape(e.problem)}[/]" if e.problem else (escape(f"alias {e.alias}") if e.alias else "")
        table.add_row(escape(e.name), format_bytes(e.size_bytes), escape(str(e.folder)), note)
    console.print(table)


@app.command("inspect")
def inspect(
    name: str = typer.Argument(..., help="A LoRA name from `hayai lora list`, or a .safetensors path."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    modules: bool = typer.Option(False, "--modules", help="List every targeted layer."),
) -> None:
    """Format, rank, alpha, targeted layers, base model family, training metadata and trigger words."""
    from rich.markup import escape

    from hayai.lora import find_lora, inspect_lora
    from hayai.store import Store

    info = inspect_lora(find_lora(name, Store()))
    if as_json:
        sys.stdout.write(json.dumps(info.to_dict(), indent=2) + "\n")
        return
    family = f"{info.family.value} (from {info.family_source})" if info.family else "unknown"
    alphas = ", ".join(f"{a:g}" for a in info.alphas) if info.alphas else "none stored (scale 1)"
    rows = [
        ("file", str(info.path)),
        ("format", info.format),
        ("family", family),
        ("layers", f"{info.layers} ({', '.join(f'{c}: {n}' for c, n in info.components.items())})"),
        ("rank", ", ".join(map(str, info.ranks))),
        ("alpha", alphas),
        ("size", format_bytes(info.size_bytes)),
        ("sha256", info.sha256),
        ("A1111 hash", info.short_hash),
        ("triggers", ", ".join(info.trigger_words) or "none recorded"),
    ]
    for key, value in rows:
        console.print(escape(f"{key:>10}: {value}"))
    if info.training:
        console.print("  training:")
        for key, value in info.training.items():
            console.print(escape(f"    {key}: {value if len(value) < 200 else value[:200] + '...'}"))
    if info.stray_keys:
        console.print(f"[red]{len(info.stray_keys)} keys are not LoRA layers hayai can apply:[/]")
        for key, reason in info.stray_keys[:20]:
            console.print(escape(f"    {key}: {reason}"))
    if modules:
        console.print("  layers:")
        for module in info.modules:
            console.print(escape(f"    {module}"))
