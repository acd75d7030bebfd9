"""`hayai eval adherence`: how well a model draws what the prompt asks, per attribute."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from hayai.cli.app import App

from hayai.cli.output import console, err_console, silence_library_progress

app = App(help="Measure models: prompt adherence on the shapes world.", no_args_is_help=True)


@app.command("adherence")
def adherence(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or path \\[the default model]."),
    steps: int = typer.Option(20, "--steps", help="Denoising steps."),
    cfg: float = typer.Option(7.0, "--cfg", help="CFG scale."),
    seeds: int = typer.Option(2, "--seeds", "-n", help="Seeds per prompt (0..n-1); images = 60 prompts x n."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="A1111 sampler name \\[the family's default]."),
    schedule: str = typer.Option("Automatic", "--schedule", help="Schedule type \\[the sampler's own]."),
    as_json: bool = typer.Option(False, "--json", help="Print the report (with every miss) as JSON on stdout."),
) -> None:
    """Generate a fixed, balanced set of shapes prompts and report the accuracy of each attribute.

    Each image is read back by pixel analysis (colour statistics, mask, template IoU, centroid) and
    compared with its prompt: colour, shape, size, position and background.
    """
    from hayai.demo.adherence import evaluate
    from hayai.errors import RequestError

    if seeds < 1:
        raise RequestError(f"seeds={seeds} must be at least 1")
    silence_library_progress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("prompts"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True, disable=as_json,
    ) as bar:
        task = bar.add_task("prompts", total=None)
        report = evaluate(
            model, steps=steps, cfg_scale=cfg, sampler=sampler, schedule_type=schedule, seeds=seeds,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        return
    from rich.table import Table

    table = Table("attribute", "accuracy", box=None)
    for attribute, value in report.accuracy.items():
        table.add_row(attribute, f"{100 * value:.1f}%")
    console.print(table)
    console.print(
        f"[dim]{report.model}: {report.images} images ({len(report.seeds)} seeds x {report.images // len(report.seeds)} prompts), "
        f"{report.steps} steps, CFG {report.cfg_scale:g}, {report.sampler} {report.schedule_type}; {report.seconds:.1f}s[/]"
    )
