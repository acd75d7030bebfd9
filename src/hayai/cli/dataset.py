"""`hayai dataset check|prepare|render`: the dataset doctor, dataset preparation (the source folder is only read),
and a dataset rendered by a model from a list of prompts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from hayai.cli.app import App

from hayai.cli.output import console, err_console, progress_printer
from hayai.cli.request_options import COMMON, HIRES, RunFlags, request_options, run_flags

app = App(help="Training datasets: check a folder of images and captions, prepare it for training, render one with a model.",
                  no_args_is_help=True)

_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}


@app.callback()
def _group() -> None:
    """Training datasets."""


@app.command("check")
def check(
    folder: Path = typer.Argument(..., help="Folder of images with .txt captions (or metadata.jsonl); kohya N_name folders understood."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="The training resolution, to flag images too small for it \\[the model's native size]."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The model you will train on, for its native size \\[the default model]."),
    trigger: Optional[str] = typer.Option(None, "--trigger", help="The trigger word the captions should carry."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Counts, sizes, aspect ratios, captions, duplicates and tags, with what to fix (20-50 varied, sharp, well-captioned images)."""
    from rich.markup import escape

    from hayai.dataset import check_dataset, scan_dataset

    if resolution is None:  # what `train lora` will use: the model's native size
        from hayai.models.catalog import Catalog
        from hayai.models.loading import native_side
        from hayai.store import Store

        resolution = native_side(Catalog(Store()).resolve(model))
    report = check_dataset(scan_dataset(folder), resolution=resolution, trigger_word=trigger)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        console.print(escape(f"{report.root}: {report.images} images, {report.usable} readable"))
        for name, facts in report.folders.items():
            repeats = f", {facts['repeats']} repeats of class {facts['class']!r}" if facts["class"] else ""
            console.print(escape(f"  {name}: {facts['images']} images{repeats}"))
        if report.sizes:
            s = report.sizes
            console.print(escape(f"  sizes: {s['min_width']}-{s['max_width']} x {s['min_height']}-{s['max_height']} px "
                                 f"(median {s['median_width']}x{s['median_height']}); aspect ratios: "
                                 + ", ".join(f"{r} {n}" for r, n in report.aspect_ratios.items())))
        c = report.captions
        console.print(escape(f"  captions: {c['txt']} .txt, {c['metadata']} metadata, {c['missing']} missing, {c['empty']} empty"))
        if report.tags:
            console.print(escape("  top tags: " + ", ".join(f"{t} ({n})" for t, n in report.tags[:12])))
        for finding in report.findings:
            console.print(f"[{_STYLE[finding.level]}]{finding.level}[/]: " + escape(finding.message))
    if report.errors:
        raise typer.Exit(1)


@app.command("prepare")
def prepare(
    folder: Path = typer.Argument(..., help="The source folder (never modified)."),
    out: Path = typer.Argument(..., help="Where the prepared images and manifest.json go (a new or prepared folder)."),
    resolution: int = typer.Option(512, "--resolution", help="Training side in pixels (SD1 512, SDXL/SD3 1024)."),
    step: int = typer.Option(64, "--step", help="Bucket sides are multiples of this (64 for SD1/SDXL/SD3)."),
    buckets: bool = typer.Option(True, "--buckets/--square", help="Aspect-ratio buckets, or centre-cropped squares."),
    validation: float = typer.Option(0.1, "--validation", help="Share of the images held out for validation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/validation split."),
    trigger: Optional[str] = typer.Option(None, "--trigger", help="Put this in front of captions that lack it."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Resize and crop into aspect buckets, split train/validation, write images, captions and manifest.json."""
    from rich.markup import escape

    from hayai.dataset import prepare_dataset, scan_dataset

    manifest = prepare_dataset(scan_dataset(folder), out, resolution=resolution, bucket_step=step, buckets=buckets,
                               validation_fraction=validation, seed=seed, trigger_word=trigger)
    if as_json:
        sys.stdout.write(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return
    buckets_used: dict[str, int] = {}
    for item in manifest.items:
        buckets_used[f"{item.width}x{item.height}"] = buckets_used.get(f"{item.width}x{item.height}", 0) + 1
    console.print(escape(f"{manifest.folder}: {len(manifest.split('train'))} training and {len(manifest.split('validation'))} "
                         f"validation images; buckets {', '.join(f'{b} ({n})' for b, n in sorted(buckets_used.items()))}"))
    for skipped in manifest.skipped:
        console.print(f"skipped {skipped['source']}: {skipped['reason']}", style="yellow", markup=False)
    for item in manifest.items:
        if item.note:
            console.print(f"{item.source}: {item.note}", style="yellow", markup=False)


# request fields the render sets for every image (hayai.dataset.render.RENDER_SETS but the prompt and the seed,
# which are the file's lines and --seed here): no options of their own
_SET_BY_RENDER = ("output_dir", "filename_pattern", "image_format", "batch_size", "batch_count")


@app.command("render")
@run_flags()
@request_options(*(name for name in COMMON if name not in _SET_BY_RENDER), "denoising_strength", *HIRES,
                 flags={"denoising_strength": ("--hires-denoise", "--denoise")},
                 helps={"denoising_strength": "Hires passes: 0 keeps the first pass, 1 replaces it \\[0.75].",
                        "seed": "Image N (N = prompt x per-prompt + k) gets seed SEED + N \\[random; OUT rendered "
                                "before: its seed].",
                        "model": "Model name, path or hub id (local cache only) \\[OUT rendered before: its model; "
                                 "else the default model]."})
def render(
    prompts: Path = typer.Argument(..., help="A UTF-8 text file of prompts, one a line (blank lines and # lines skipped)."),
    out: Path = typer.Argument(..., help="The dataset folder: new, empty, or rendered before (then only what is missing is rendered)."),
    per_prompt: Optional[int] = typer.Option(None, "--per-prompt", help="Images of each prompt \\[1; OUT rendered before: its number]."),
    given: dict = None,
    flags: RunFlags = None,
) -> None:
    """Render a captioned training dataset with a model: OUT/NNNNN.png, its prompt as plain text in NNNNN.txt.

    For `hayai train distill --model M --dataset OUT`, or as kohya-style regularization images.
    Every image records how it was made. `render PROMPTS OUT` continues a render where it stopped,
    with the settings OUT was rendered with; files it did not write are never replaced."""
    import shlex

    from rich.markup import escape

    from hayai.dataset.render import read_prompts, render_dataset

    lines = read_prompts(prompts)
    seed = given.pop("seed", None)
    engine = flags.engine()
    try:
        with progress_printer(enabled=flags.show_progress) as on_progress:
            result = render_dataset(engine, lines, out, per_prompt=per_prompt, settings=given, seed=seed,
                                    prompts_file=prompts, progress=on_progress)
    except KeyboardInterrupt:
        err_console.print("interrupted: the finished images and captions were kept; run the same command again to continue")
        raise typer.Exit(130)
    if flags.as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    if flags.quiet:
        return
    captioned = f", {len(result.captioned)} captions written for images found without one" if result.captioned else ""
    console.print(escape(f"{result.folder}: {result.total} images, {result.prompts} prompts x {result.per_prompt} "
                         f"({len(result.rendered)} rendered now, {result.found} there already{captioned}); "
                         f"model {result.model}, seed {result.seed}"), soft_wrap=True)
    console.print("[dim]" + escape(f"train on it: hayai train distill --model {shlex.quote(result.model_ref)} "
                                   f"--dataset {shlex.quote(str(result.folder))}")
                  + "[/]", soft_wrap=True)
