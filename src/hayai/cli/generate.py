"""`hayai generate` and `hayai info`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from hayai.cli.output import console, err_console, format_bytes, printable, progress_printer, silence_library_progress


def generate(
    prompt: Optional[str] = typer.Argument(None, help="What to draw (A1111-style prompt)."),
    negative: Optional[str] = typer.Option(None, "--negative", "-n", help="Negative prompt."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name, path, or hub id (local cache only)."),
    model_config: Optional[str] = typer.Option(None, "--model-config", help="Single-file checkpoints: a diffusers folder with the component configs."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps [20]."),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="CFG scale [7]."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help='A1111 sampler name, e.g. "Euler a", "DPM++ 2M" \\[family default].'),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="Schedule type: Automatic, Uniform, Karras, Exponential, Beta, SGM Uniform, Simple."),
    width: Optional[int] = typer.Option(None, "--width", "-W", help="Width in pixels \\[the model's native size]."),
    height: Optional[int] = typer.Option(None, "--height", "-H", help="Height in pixels \\[the model's native size]."),
    seed: Optional[int] = typer.Option(None, "--seed", "-s", help="Seed; -1 for random [-1]. Image i of a run gets seed+i."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Images per pass [1]."),
    batch_count: Optional[int] = typer.Option(None, "--batch-count", "-c", help="Passes [1]."),
    clip_skip: Optional[int] = typer.Option(None, "--clip-skip", help="A1111 clip skip (1 = none) [1]."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder [$HAYAI_HOME/outputs]."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="File name pattern [{index:05d}-{seed}]."),
    image_format: Optional[str] = typer.Option(None, "--format", help="png, jpg or webp \\[png]."),
    lora: Optional[list[str]] = typer.Option(None, "--lora", "-l", help="NAME:W or NAME:TE_W:UNET_W; repeat for several. <lora:NAME:W> in the prompt works too."),
    lora_partial: bool = typer.Option(False, "--lora-partial", help="Apply a LoRA even if some of its keys match no layer (a warning, not an error)."),
    from_image: Optional[Path] = typer.Option(None, "--from", help="Regenerate the image this file's metadata describes."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow .ckpt/.pt checkpoints (they can run code)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="speed, balanced or quality: fills size, batch and steps you did not set, from this machine's tier."),
    vram: Optional[str] = typer.Option(None, "--vram", help="Use at most this much GPU memory, e.g. 6GB (a real cap on CUDA)."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Force an execution strategy (see `hayai plan`) instead of the planner's choice."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or mps \\[the best one here]."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress, no summary."),
) -> None:
    """Generate images from a prompt (or regenerate one with --from IMAGE)."""
    from hayai.errors import RequestError
    from hayai.generation.engine import Engine
    from hayai.generation.request import GenerationRequest

    given = {
        "prompt": prompt, "negative_prompt": negative, "model": model, "model_config": model_config,
        "steps": steps, "cfg_scale": cfg, "sampler": sampler, "schedule_type": schedule, "width": width,
        "height": height, "seed": seed, "batch_size": batch_size, "batch_count": batch_count,
        "clip_skip": clip_skip, "output_dir": str(output) if output else None, "filename_pattern": pattern,
        "image_format": image_format, "loras": tuple(lora) if lora else None,
        "lora_partial": True if lora_partial else None,
    }
    given = {key: value for key, value in given.items() if value is not None}
    request = None
    if from_image is None:
        if "prompt" not in given:
            raise RequestError("a prompt is required (or --from IMAGE to regenerate an image)")
        request = GenerationRequest(**given)  # bad input fails here, before any model is touched
    from hayai.cli.plan import parse_size

    cap = parse_size(vram) if vram else None
    silence_library_progress()
    engine = Engine(allow_pickle=allow_pickle, vram=cap, strategy=strategy, device=device)
    if preset is not None and request is not None:
        request = _with_preset(engine, request, given, preset)
    try:
        with progress_printer(enabled=not (quiet or as_json)) as on_progress:
            if request is None:
                result = engine.reproduce(from_image, progress=on_progress, **given)
            else:
                result = engine.generate(request, progress=on_progress)
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
        console.print(f"[yellow]out of memory[/] during {event['phase']} with {event['strategy']}: "
                      f"stepped down to {event['next']}")


def _with_preset(engine, request, given: dict, preset: str):
    """Fill the size, batch and steps the user left unset from the preset's tier for this device."""
    import dataclasses

    from hayai.memory.presets import suggest

    source = engine.catalog.resolve(request.model, allow_pickle=engine.allow_pickle, config=request.model_config)
    suggestion = suggest(engine.device_spec, source.family, preset)
    engine.allow_lossy = suggestion.allow_lossy
    fill = {"width": suggestion.width, "height": suggestion.height, "batch_size": suggestion.batch_size,
            "steps": suggestion.steps}
    return dataclasses.replace(request, **{k: v for k, v in fill.items() if k not in given})


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
