"""`hayai sweep`, `hayai explore` and `hayai refine`."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from hayai.cli.output import console, err_console, escape, format_bytes, progress_printer
from hayai.cli.request_options import COMMON, HIRES, IMG2IMG, INPAINT, RunFlags, request_options, run_flags

DEFAULT_PROMPT = "a small red circle at the top left on a white background"  # a shapes caption: adherence is scored


@run_flags({"strategy": "Force an execution strategy (unless a Strategy axis sets it).",
            "as_json": "Print the sweep's files and rows as JSON."})
@request_options(*(n for n in COMMON if n not in ("output_dir", "filename_pattern")), *IMG2IMG, *INPAINT, *HIRES,
                 helps={"steps": "Steps where no axis sets them \\[20].",
                        "seed": "Seed of every cell unless Seed is an axis; -1 draws one [-1].",
                        "batch_count": "Passes per cell [1].",
                        "loras": "NAME or NAME:W; a LoRA weight axis sets W of every --lora."})
def sweep(
    prompt: Optional[str] = typer.Argument(None, help=f"What to draw [{DEFAULT_PROMPT!r}]."),
    x: Optional[str] = typer.Option(None, "--x", help='X axis (columns): NAME=VALUES, e.g. steps=5,10,20 or "steps=5-70 (+5)".'),
    y: Optional[str] = typer.Option(None, "--y", help='Y axis (rows), e.g. cfg=2,7 or "CFG Scale=1-10 [5]".'),
    z: Optional[str] = typer.Option(None, "--z", help='Z axis (one grid per value), e.g. sampler="Euler a,DPM++ 2M".'),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The sweep's folder \\[$HAYAI_HOME/sweeps/<prompt>-<id>]; the same command resumes there."),
    restart: bool = typer.Option(False, "--restart", help="Start over instead of resuming what the folder holds."),
    given: dict = None,
    flags: RunFlags = None,
) -> None:
    """An X/Y/Z plot: every combination of up to three axes, with a labelled grid, CSV/JSON timings and a chart.

    Axes: steps, cfg, sampler, schedule, seed, width, height, size (512x768), batch_size, batch_count,
    clip_skip, lora_weight, prompt_sr, model, strategy (A1111 labels such as "CFG Scale" work too).
    Values: 5,10,20 | 5-70 (+5) | 1-10 [5]. An interrupted sweep resumes when run again.
    """
    from hayai.errors import RequestError
    from hayai.sweep import make_plan, parse_axis, run_sweep

    if x is None:
        raise RequestError("a sweep needs an X axis: --x NAME=VALUES, e.g. --x steps=5,10,20 (then --y and --z)")
    if z is not None and y is None:
        raise RequestError("--z needs a --y axis first; use --y for the second axis")
    from hayai.generation.request import GenerationRequest

    base = GenerationRequest(**{**given, "prompt": prompt or DEFAULT_PROMPT})
    axes = [parse_axis(text) if text else None for text in (x, y, z)]
    engine = flags.engine()
    plan = make_plan(base, *axes, strategy=flags.strategy, device=engine.device_spec.torch_device)
    columns, rows, grids = plan.shape()
    if flags.show_progress:
        err_console.print(f"sweep: {len(plan.cells)} cells ({columns} x {rows}" + (f" x {grids}" if grids > 1 else "")
                          + f"), {sum(c.request.total_images for c in plan.cells)} images, seed {plan.base.seed}"
                          + (" (the Seed axis sets it)" if any(a.kind.key == "seed" for a in plan.axes.values()) else ""))
    try:
        with _sweep_progress(enabled=flags.show_progress) as on_progress:
            result = run_sweep(engine, plan, output, restart=restart, progress=on_progress)
    except KeyboardInterrupt:
        err_console.print("interrupted: finished cells are recorded; run the same command again to resume")
        raise typer.Exit(130)
    if flags.as_json:
        sys.stdout.write(json.dumps({**result.to_dict(), "rows": result.rows}, indent=2, ensure_ascii=False) + "\n")
        return
    for warning in dict.fromkeys(w for row in result.rows for w in row["warnings"]):
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    if flags.quiet:
        return
    _print_table(result)
    if result.resumed:
        console.print(f"resumed: {result.resumed} cells were already done, {result.ran} ran now")
    for grid in result.grids:
        console.print(escape(f"grid   {grid}"), soft_wrap=True)
    console.print(escape(f"chart  {result.chart}"), soft_wrap=True)
    console.print(escape(f"table  {result.csv}  (and {result.json.name})"), soft_wrap=True)


def _print_table(result) -> None:
    from rich.table import Table

    table = Table("cell", "seconds", "s/step", "peak memory", "adherence", box=None)
    for row in result.rows:
        label = ", ".join(part for part in (row["x"], row["y"], row["z"]) if part)
        score = "" if row["adherence"] is None else f"{row['adherence']:.2f}"
        table.add_row(escape(label), f"{row['seconds']:.2f}", f"{row['seconds_per_step']:.3f}",
                      format_bytes(row["peak_memory_bytes"]), score)
    console.print(table)


@contextmanager
def _sweep_progress(enabled: bool = True):
    """A bar over the whole sweep's work, with the cell running and the ETA for everything left."""
    if not enabled:
        yield None
        return
    if not err_console.is_terminal:  # a log or a pipe: a line per finished cell
        printed = [0]

        def on_line(event) -> None:
            if event.cells_done > printed[0]:
                printed[0] = event.cells_done
                eta = "" if event.eta_seconds is None or event.cells_done == event.cells_total else (
                    f", ETA {int(event.eta_seconds // 60)}:{int(event.eta_seconds % 60):02d}")
                err_console.print(f"cell {event.cells_done}/{event.cells_total} done{eta}", soft_wrap=True)

        yield on_line
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.fields[cells]}"), TextColumn("{task.fields[eta]}"),
                        console=err_console, transient=True)
    task = progress.add_task("sweep", total=1.0, cells="", eta="")

    def on_event(event) -> None:
        eta = "" if event.eta_seconds is None else f"ETA {int(event.eta_seconds // 60)}:{int(event.eta_seconds % 60):02d}"
        progress.update(task, completed=event.work_done, total=event.work_total or 1.0,
                        description=event.detail or "sweep", cells=f"{event.cells_done}/{event.cells_total} cells", eta=eta)

    with progress:
        yield on_event


@run_flags()
@request_options("negative_prompt", "model", "steps", "cfg_scale", "sampler", "schedule_type", "width", "height", "seed",
                 "batch_size", "loras", "output_dir", "image_format",
                 helps={"steps": "Steps [20]; keep them low, refine the keeper.", "seed": "First seed; -1 draws one [-1].",
                        "batch_size": "Images per pass [1]; the count must be a multiple."})
def explore(
    prompt: str = typer.Argument(..., help="What to draw."),
    count: int = typer.Option(16, "--count", help="How many seeds (seed, seed+1, ...)."),
    given: dict = None,
    flags: RunFlags = None,
) -> None:
    """Many seeds of one prompt at low cost, and a contact sheet labelled with the seeds (then `hayai refine`)."""
    from hayai.sweep import explore as run_explore

    from hayai.generation.request import GenerationRequest

    request = GenerationRequest(**{**given, "prompt": prompt})
    engine = flags.engine()
    try:
        with progress_printer(enabled=flags.show_progress) as on_progress:
            explored = run_explore(engine, request, count, progress=on_progress)
    except KeyboardInterrupt:
        err_console.print("interrupted: finished images were kept, nothing half-written was left")
        raise typer.Exit(130)
    if flags.as_json:
        sys.stdout.write(json.dumps(explored.to_dict(), indent=2) + "\n")
        return
    for warning in explored.result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    if flags.quiet:
        return
    for image in explored.result.images:
        console.print(escape(f"{image.path}  seed {image.seed}"), soft_wrap=True)
    console.print(escape(f"contact sheet  {explored.contact_sheet}"), soft_wrap=True)
    first = explored.result.images[0].path
    console.print("[dim]" + escape(f"refine the one you like: hayai refine {first} --steps 50") + "[/]", soft_wrap=True)


@run_flags()
@request_options("cfg_scale", "sampler", "schedule_type", "width", "height", "output_dir", "image_format",
                 "denoising_strength", *HIRES,
                 helps={"cfg_scale": "CFG scale \\[the image's].", "sampler": "A1111 sampler name \\[the image's].",
                        "schedule_type": "Schedule type \\[the image's].",
                        "width": "Width \\[the image's; another size changes the composition].",
                        "height": "Height \\[the image's].", "output_dir": "Output folder \\[the image's run folder].",
                        "image_format": "png, jpg or webp \\[the image's]."})
def refine(
    image: Path = typer.Argument(..., help="An image made by hayai (e.g. by `hayai explore`) or by A1111."),
    steps: int = typer.Option(50, "--steps", help="Steps for the refined image."),
    given: dict = None,
    flags: RunFlags = None,
) -> None:
    """Re-run one image's seed and prompt alone at higher quality (more steps by default; --hires 2 for a larger one)."""
    from hayai.sweep import refine_request

    request, warnings = refine_request(image, steps=steps, **given)
    engine = flags.engine()
    try:
        with progress_printer(enabled=flags.show_progress) as on_progress:
            result = engine.generate(request, progress=on_progress)
    except KeyboardInterrupt:
        err_console.print("interrupted: finished images were kept, nothing half-written was left")
        raise typer.Exit(130)
    result.warnings[:0] = warnings
    if flags.as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    if not flags.quiet:
        for generated in result.images:
            console.print(escape(f"{generated.path}  seed {generated.seed}, {result.request.steps} steps"), soft_wrap=True)
