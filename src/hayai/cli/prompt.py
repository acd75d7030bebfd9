"""`hayai prompt check`: tokens, chunks, weights, LoRA tags and warnings for a prompt."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from hayai.cli.app import App

from hayai.cli.output import console

app = App(help="Prompts in A1111 syntax: see what the text encoders will get.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Prompts in A1111 syntax."""


@app.command("check")
def check(
    prompt: str = typer.Argument(..., help="The prompt (A1111 syntax: (x:1.2), \\[x], BREAK, \\[from:to:0.5], <lora:NAME:W>)."),
    negative: str = typer.Option("", "--negative", "-n", help="Negative prompt."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model whose tokenizers count \\[the default model]."),
    model_config: Optional[str] = typer.Option(None, "--model-config", help="Single-file checkpoints: a diffusers folder with the configs."),
    steps: int = typer.Option(20, "--steps", help="Steps, for prompt-editing schedules."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Tokens per encoder, chunk boundaries, what would be cut, weights, LoRA tags, warnings."""
    from rich.markup import escape

    from hayai.models.catalog import Catalog, is_placeholder
    from hayai.prompts import check_prompt, load_tokenizers
    from hayai.store import Store

    source = Catalog(Store()).resolve(model, config=model_config)
    report = check_prompt(prompt, negative, tokenizers=load_tokenizers(source), family=source.family, steps=steps)
    if is_placeholder(source):
        report.warnings.insert(0, "no model installed: counts come from the placeholder model's tokenizer (one token per character)")
    if as_json:
        sys.stdout.write(json.dumps({"model": source.name, **report.to_dict()}, indent=2) + "\n")
        return
    console.print(escape(f"model: {source.name} ({source.family.value})"))
    for label, side in (("prompt", report.prompt), ("negative prompt", report.negative)):
        console.print(f"[bold]{label}[/]: " + escape(repr(side.text_without_loras)))
        for tag in side.loras:
            weights = f"{tag.te_weight:g}" if tag.te_weight == tag.unet_weight else f"te {tag.te_weight:g}, unet {tag.unet_weight:g}"
            console.print(escape(f"  LoRA {tag.name}: {weights}"))
        if side.weighted:
            console.print(escape("  weights: " + ", ".join(f"{t.strip()!r} x{w:.3g}" for t, w in side.weighted)))
        if side.breaks:
            console.print(f"  BREAK: {side.breaks}")
        if len(side.schedule) > 1:
            console.print("  prompt editing:")
            for end, text in side.schedule:
                console.print(escape(f"    up to step {end}: {text!r}"))
        for enc in side.encoders:
            detail = f"{len(enc.chunks)} chunk(s)" if enc.chunks else ("cut" if enc.cut else "fits")
            console.print(f"  {enc.encoder}: {enc.tokens} tokens, {detail}")
            for k, text in enumerate(enc.chunks if len(enc.chunks) > 1 else []):
                console.print(escape(f"    chunk {k + 1}: {text!r}"))
            if enc.cut:
                console.print("    [red]cut[/]: " + escape(repr(enc.cut)))
    if report.warnings:
        console.print("[yellow]warnings[/]:")
        for warning in report.warnings:
            console.print("  - " + escape(warning))
