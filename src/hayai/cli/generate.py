"""`hayai generate` and `hayai info`."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from hayai.cli.output import console, err_console, format_bytes, progress_printer, silence_library_progress
from hayai.cli.request_options import COMMON, HIRES, IMG2IMG, INPAINT, request_options


@request_options(*COMMON, "denoising_strength", *HIRES)
def generate(
    prompt: Optional[str] = typer.Argument(None, help="What to draw (A1111-style prompt)."),
    from_image: Optional[Path] = typer.Option(None, "--from", help="Regenerate the image this file's metadata describes."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow .ckpt/.pt checkpoints (they can run code)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="speed, balanced or quality: fills size, batch and steps you did not set, from this machine's tier."),
    vram: Optional[str] = typer.Option(None, "--vram", help="Use at most this much GPU memory, e.g. 6GB (a real cap on CUDA)."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Force an execution strategy (see `hayai plan`) instead of the planner's choice."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or mps \\[the best one here]."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress, no summary."),
    given: dict = None,
) -> None:
    """Generate images from a prompt (or regenerate one with --from IMAGE); --hires or --progressive for larger ones."""
    from hayai.errors import RequestError

    if prompt is not None:
        given["prompt"] = prompt
    if from_image is None and "prompt" not in given:
        raise RequestError("a prompt is required (or --from IMAGE to regenerate an image)")
    _run(given, from_image=from_image, allow_pickle=allow_pickle, preset=preset, vram=vram, strategy=strategy,
         device=device, as_json=as_json, quiet=quiet)


@request_options(*COMMON, *IMG2IMG)
def img2img(
    image: Path = typer.Argument(..., help="The image to start from."),
    prompt: str = typer.Argument(..., help="What to make of it (A1111-style prompt)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow .ckpt/.pt checkpoints (they can run code)."),
    vram: Optional[str] = typer.Option(None, "--vram", help="Use at most this much GPU memory, e.g. 6GB (a real cap on CUDA)."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Force an execution strategy (see `hayai plan`) instead of the planner's choice."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or mps \\[the best one here]."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress, no summary."),
    given: dict = None,
) -> None:
    """Redraw an image from a prompt (img2img): --strength 0 keeps it, 1 replaces it."""
    _run({**given, "prompt": prompt, "init_image": str(image)}, allow_pickle=allow_pickle, vram=vram,
         strategy=strategy, device=device, as_json=as_json, quiet=quiet)


@request_options(*COMMON, *IMG2IMG, *INPAINT)
def inpaint(
    image: Path = typer.Argument(..., help="The image to change."),
    prompt: str = typer.Argument(..., help="What to draw where the mask is white (A1111-style prompt)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow .ckpt/.pt checkpoints (they can run code)."),
    vram: Optional[str] = typer.Option(None, "--vram", help="Use at most this much GPU memory, e.g. 6GB (a real cap on CUDA)."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Force an execution strategy (see `hayai plan`) instead of the planner's choice."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or mps \\[the best one here]."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress, no summary."),
    given: dict = None,
) -> None:
    """Redraw what a mask covers (--mask MASK, white = redraw; --mask alpha: the image's transparent pixels)."""
    from hayai.errors import RequestError

    if "mask" not in given:
        raise RequestError("inpainting needs --mask MASK (white = redraw), or --mask alpha for the image's transparent pixels")
    _run({**given, "prompt": prompt, "init_image": str(image)}, allow_pickle=allow_pickle, vram=vram,
         strategy=strategy, device=device, as_json=as_json, quiet=quiet)


def _run(given: dict, *, from_image: Path | None = None, allow_pickle: bool = False, preset: str | None = None,
         vram: str | None = None, strategy: str | None = None, device: str | None = None, as_json: bool = False,
         quiet: bool = False) -> None:
    """Make the request (bad input fails here, before any model is touched), run it, print the result."""
    from hayai.cli.plan import parse_size
    from hayai.generation.engine import Engine
    from hayai.generation.options import RunOptions
    from hayai.generation.request import GenerationRequest

    request = None if from_image is not None else GenerationRequest(**given)
    cap = parse_size(vram) if vram else None
    silence_library_progress()
    engine = Engine(allow_pickle=allow_pickle, vram=cap, device=device)
    options = RunOptions(strategy=strategy)
    if preset is not None and request is not None:
        request, options = _with_preset(engine, request, given, preset, options)
    try:
        with progress_printer(enabled=not (quiet or as_json)) as on_progress:
            options = dataclasses.replace(options, progress=on_progress)
            if request is None:
                result = engine.reproduce(from_image, options, **given)
            else:
                result = engine.generate(request, options)
    except KeyboardInterrupt:
        err_console.print("interrupted: finished images were kept, nothing half-written was left")
        raise typer.Exit(130)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
    if quiet:
        return
    for image in result.images:
        console.print(f"{image.path}  seed {image.seed}")
    phases = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in result.timings.items())
    peak = format_bytes(result.peak_memory.peak_bytes)
    console.print(
        f"[dim]{result.model} ({result.family.value}) on {result.device}/{result.dtype}: {phases}; "
        f"peak memory {peak} ({result.peak_memory.kind})[/]"
    )
    console.print(f"[dim]strategy {result.plan_reason}[/]")
    for event in result.events:
        if event.get("event") == "out_of_memory":
            console.print(f"[yellow]out of memory[/] during {event['phase']} with {event['strategy']}: "
                          f"stepped down to {event['next']}")


def _with_preset(engine, request, given: dict, preset: str, options):
    """Fill the size, batch and steps the user left unset from the preset's tier for this device."""
    from hayai.memory.presets import suggest

    source = engine.catalog.resolve(request.model, allow_pickle=engine.allow_pickle, config=request.model_config)
    suggestion = suggest(engine.device_spec, source.family, preset)
    fill = {"width": suggestion.width, "height": suggestion.height, "batch_size": suggestion.batch_size,
            "steps": suggestion.steps}
    request = dataclasses.replace(request, **{k: v for k, v in fill.items() if k not in given})
    return request, dataclasses.replace(options, allow_lossy=suggestion.allow_lossy)


def info(
    image: Path = typer.Argument(..., help="A PNG, JPEG or WEBP made by hayai, A1111 or Forge."),
    as_json: bool = typer.Option(False, "--json", help="Parsed parameters and hayai's record as JSON."),
) -> None:
    """Print the generation parameters stored in an image."""
    from hayai.errors import HayaiError
    from hayai.generation.imagefile import read_image_metadata
    from hayai.generation.infotext import parse_infotext

    meta = read_image_metadata(image)
    if meta.infotext is None and meta.hayai is None:
        raise HayaiError(f"{image} carries no generation parameters")
    if as_json:
        parsed = parse_infotext(meta.infotext) if meta.infotext else None
        data = {
            "parameters": meta.infotext,
            "parsed": None if parsed is None else {
                "prompt": parsed.prompt, "negative_prompt": parsed.negative_prompt, "params": parsed.params
            },
            "hayai": meta.hayai,
        }
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return
    sys.stdout.write((meta.infotext or "(no A1111 parameters; hayai data only: use --json)") + "\n")
