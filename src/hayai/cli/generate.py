"""`hayai generate` and `hayai info`."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from hayai.cli.output import console, err_console, escape, format_bytes, printable, progress_printer
from hayai.cli.request_options import COMMON, HIRES, IMG2IMG, INPAINT, RunFlags, request_options, run_flags


_WITHOUT_IMAGE = tuple(name for name in IMG2IMG if name != "init_image")  # the image is their argument


@run_flags()
@request_options(*COMMON, "denoising_strength", *HIRES,
                 flags={"denoising_strength": ("--hires-denoise", "--denoise")},
                 helps={"denoising_strength": "Hires passes: 0 keeps the first pass, 1 replaces it \\[0.75]."})
def generate(
    prompt: Optional[str] = typer.Argument(None, help="What to draw (A1111-style prompt)."),
    from_image: Optional[Path] = typer.Option(None, "--from", help="Regenerate the image this file's metadata describes."),
    preset: Optional[str] = typer.Option(None, "--preset", help="speed, balanced or quality: fills size, batch and steps you did not set, from this machine's tier."),
    given: dict = None,
    flags: RunFlags = None,
) -> None:
    """Generate images from a prompt (or regenerate one with --from IMAGE); --hires or --progressive for larger ones."""
    from hayai.errors import RequestError

    if prompt is not None:
        given["prompt"] = prompt
    if from_image is None and "prompt" not in given:
        raise RequestError("a prompt is required (or --from IMAGE to regenerate an image)")
    _run(given, flags, from_image=from_image, preset=preset)


@run_flags()
@request_options(*COMMON, *_WITHOUT_IMAGE)
def img2img(
    image: Path = typer.Argument(..., help="The image to start from."),
    prompt: str = typer.Argument(..., help="What to make of it (A1111-style prompt)."),
    given: dict = None,
    flags: RunFlags = None,
) -> None:
    """Redraw an image from a prompt (img2img): --strength 0 keeps it, 1 replaces it."""
    _run({**given, "prompt": prompt, "init_image": str(image)}, flags)


@run_flags()
@request_options(*COMMON, *_WITHOUT_IMAGE, *INPAINT)
def inpaint(
    image: Path = typer.Argument(..., help="The image to change."),
    prompt: str = typer.Argument(..., help="What to draw where the mask is white (A1111-style prompt)."),
    given: dict = None,
    flags: RunFlags = None,
) -> None:
    """Redraw what a mask covers (--mask MASK, white = redraw; --mask alpha: the image's transparent pixels)."""
    from hayai.errors import RequestError

    if "mask" not in given:
        raise RequestError("inpainting needs --mask MASK (white = redraw), or --mask alpha for the image's transparent pixels")
    _run({**given, "prompt": prompt, "init_image": str(image)}, flags)


def _run(given: dict, flags: RunFlags, *, from_image: Path | None = None, preset: str | None = None) -> None:
    """Make the request (bad input fails here, before any model is touched), run it, print the result."""
    from hayai.generation.options import RunOptions
    from hayai.generation.request import GenerationRequest

    request = None if from_image is not None else GenerationRequest(**given)
    engine = flags.engine()
    options = RunOptions(strategy=flags.strategy)
    if preset is not None and request is not None:
        request, options = _with_preset(engine, request, given, preset, options)
    try:
        with progress_printer(enabled=flags.show_progress) as on_progress:
            options = dataclasses.replace(options, progress=on_progress)
            if request is None:
                result = engine.reproduce(from_image, options, **given)
            else:
                result = engine.generate(request, options)
    except KeyboardInterrupt:
        err_console.print("interrupted: finished images were kept, nothing half-written was left")
        raise typer.Exit(130)
    if flags.as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    if flags.quiet:
        return
    for image in result.images:
        console.print(escape(f"{image.path}  seed {image.seed}"), soft_wrap=True)
    phases = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in result.timings.items())
    peak = format_bytes(result.peak_memory.peak_bytes)
    console.print(
        "[dim]" + escape(f"{result.model} ({result.family.value}) on {result.device}/{result.dtype}: {phases}; "
                        f"peak memory {peak} ({result.peak_memory.kind})") + "[/]"
    )
    console.print(f"[dim]strategy {escape(result.plan_reason)}[/]")
    for event in result.events:
        if event.get("event") == "out_of_memory":
            console.print(f"[yellow]out of memory[/] during {event['phase']} with {event['strategy']}: "
                          f"stepped down to {event['next']}")


def _with_preset(engine, request, given: dict, preset: str, options):
    """Fill the size, batch and steps the user left unset from the preset's tier for this device."""
    from hayai.memory.presets import suggest
    from hayai.models.loading import native_side

    source = engine.catalog.resolve(request.model, allow_pickle=engine.allow_pickle, config=request.model_config)
    suggestion = suggest(engine.device_spec, source.family, preset, native=native_side(source))
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
    sys.stdout.write(printable(meta.infotext or "(no A1111 parameters; hayai data only: use --json)") + "\n")
