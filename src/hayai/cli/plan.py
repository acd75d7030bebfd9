"""`hayai doctor` and `hayai plan`: what this machine can do, and how a run would execute on it."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from hayai.cli.output import console, escape
from hayai.cli.request_options import RunFlags, run_flags
from hayai.hardware import parse_size  # noqa: F401  (the CLI's --vram parser: cli.generate and cli.sweep take it from here)


def doctor(as_json: bool = typer.Option(False, "--json", help="Findings as JSON.")) -> None:
    """Check this machine for the usual causes of slow or failing generation."""
    from hayai.doctor import diagnose
    from hayai.hardware import probe
    from hayai.speed import openvino_cache

    machine = probe()
    findings = diagnose(machine, openvino_cache=openvino_cache.usage())
    if as_json:
        sys.stdout.write(json.dumps({"machine": machine.to_dict(), "findings": [f.to_dict() for f in findings]},
                                    indent=2) + "\n")
        return
    marks = {"ok": "[green]ok[/]", "info": "[blue]info[/]", "warning": "[yellow]warning[/]", "problem": "[red]problem[/]"}
    for finding in findings:
        console.print(f"{marks[finding.level]:>20}  " + escape(f"{finding.topic}: {finding.message}"))
        if finding.fix:
            console.print(escape(f"{'':>10}  fix: {finding.fix}"))


@run_flags(only=("threads",))
def plan(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A model, or arch:sd15 / arch:sdxl / arch:sd35m."),
    width: Optional[int] = typer.Option(None, "--width", "-W", help="Width \\[the family's native size]."),
    height: Optional[int] = typer.Option(None, "--height", "-H", help="Height \\[the family's native size]."),
    batch: int = typer.Option(1, "--batch", "-b", help="Images per pass."),
    batch_count: int = typer.Option(1, "--batch-count", "-c", help="Passes (OpenVINO's pay-back counts every image)."),
    steps: int = typer.Option(20, "--steps", help="Denoising steps."),
    cfg: float = typer.Option(7.0, "--cfg", help="CFG scale (above 1 doubles the denoiser's batch)."),
    vram: Optional[str] = typer.Option(None, "--vram", help="Plan for this much device memory, e.g. 8GB."),
    device: Optional[str] = typer.Option(None, "--device", help='A device that is not here, e.g. "RTX 4060 8GB, PCIe 4.0 x8".'),
    show_all: bool = typer.Option(False, "--all", help="Also show candidates another one beats on both memory and time."),
    as_json: bool = typer.Option(False, "--json", help="The plan as JSON."),
    flags: RunFlags = None,
) -> None:
    """Every execution strategy with its predicted peak memory and time, and the one hayai would pick."""
    from hayai.hardware import GIB, use_cpu_threads
    from hayai.memory.planner import PlanRequest
    from hayai.memory.planner import plan_keeping_counts
    from hayai.memory.presets import PRESETS, suggest
    from hayai.speed.execution import choose
    from hayai.store import Store

    use_cpu_threads(flags.threads)  # as `hayai generate` would: a CPU's time is that of these threads
    source, facts, label = _facts(model)
    spec, here = _device(device, vram)
    side = facts.native_size
    shape = PlanRequest(width or side, height or side, batch, cfg > 1, steps)
    with Store() as store:
        result = plan_keeping_counts(store, facts, shape, spec)
        measured, model_hash = _measured_levers(store, source, here, shape)
    verdict = _openvino(measured, model_hash, facts, shape, batch_count, result, here)
    compiling = _compile(measured, facts.denoiser_class, shape, batch_count, result.chosen.strategy, here)
    execution, why = (choose(measured, result.chosen.strategy, compile=compiling, openvino=verdict)
                      if measured or verdict else (frozenset(), []))
    suggestions = [suggest(spec, facts.family, p, native=facts.native_size) for p in PRESETS]
    if as_json:
        sys.stdout.write(json.dumps({"model": label, "request": shape.__dict__, **result.to_dict(),
                                     "presets": [s.to_dict() for s in suggestions],
                                     "speed_levers": [m.to_dict() for m in measured],
                                     "execution": {"levers": sorted(execution), "reasons": why}},
                                    indent=2) + "\n")
        return
    from rich.table import Column, Table

    console.print(escape(f"{label} at {shape.width}x{shape.height}, batch {shape.batch_size}, {shape.steps} steps on "
                         f"{spec.describe()}; budget {result.budget_bytes / GIB:.2f} GiB"))
    table = Table("", Column("strategy", overflow="fold"), "fits", "peak GiB", "encode/denoise/decode GiB", "est. s",
                  box=None)
    shown = [e for e in result.candidates if show_all or e is result.chosen or not _dominated(e, result.candidates)]
    for e in shown:
        if spec.accelerator and e.strategy.placement == "cpu":  # it uses no GPU memory: nothing to fit
            fits, peak, phases = "(RAM)", "-", "-"
        else:
            fits, peak = "yes" if e.fits else "[red]no[/]", f"{e.peak_bytes / GIB:.2f}"
            phases = "/".join(f"{e.phase_bytes[p] / GIB:.1f}" for p in ("text_encode", "denoise", "vae_decode"))
        table.add_row("→" if e is result.chosen else "", e.strategy.name, fits, peak, phases, f"{e.seconds:.1f}")
    console.print(table)
    _legend([e.strategy for e in shown])
    if len(shown) < len(result.candidates):
        console.print(f"[dim]{len(result.candidates) - len(shown)} candidates that another beats on both memory "
                      "and time are hidden (--all shows them)[/]")
    console.print(escape(f"chosen: {result.reason}"))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    for s in suggestions:
        console.print(f"preset {s.preset:>8} ({s.tier} tier): {s.width}x{s.height}, batch {s.batch_size}, {s.steps} steps")
    if here is not None:
        _print_measured(measured, model, execution, why)


def _measured_levers(store, source, here, shape) -> tuple[list, str | None]:
    """The speed levers measured for this model on this machine's device nearest the plan's size and steps
    (none when planning for another device), and the model's hash (None when never hashed here)."""
    from hayai.models.catalog import cached_source_hash
    from hayai.store.speed_measurements import nearest

    model_hash = cached_source_hash(store, source) if here is not None else None
    if model_hash is None:  # never run here as it is now, so never measured either
        return [], None
    return nearest(store.speed_measurements(model_hash, here.key), shape.width, shape.height, shape.steps), model_hash


def _openvino(measured, model_hash, facts, shape, batch_count, plan, here) -> tuple[bool, str] | None:
    """Whether a run of this shape would go through OpenVINO here, and why (None: not judged, because the
    plan is for another device or the [openvino] extra is not installed, where it is never a question)."""
    from hayai.speed import openvino
    from hayai.speed.execution import MIN_PSNR_DB

    if here is None or not openvino.available():
        return None
    return openvino.decide(measured, model_hash=model_hash, family=facts.family, width=shape.width,
                           height=shape.height, steps=shape.steps, images=shape.batch_size * batch_count,
                           on_cpu=not here.accelerator, strategy=plan.chosen.strategy, min_psnr_db=MIN_PSNR_DB,
                           threads=here.threads, plan=plan, unet_params=facts.by_role("denoiser")[0].params)


def _compile(measured, denoiser_class, shape, batch_count, strategy, here) -> tuple[bool, str] | None:
    """Whether a run of this shape would compile the denoiser's blocks here, and why (None: not judged, for
    another device). A new process has nothing compiled yet, so the compilation is owed."""
    from hayai.speed import regional_compile

    if here is None:
        return None
    return regional_compile.decide(measured, denoiser_class=denoiser_class, width=shape.width, height=shape.height,
                                   steps=shape.steps, images=shape.batch_size * batch_count, compiled=False,
                                   strategy=strategy, threads=here.threads)


def _print_measured(measured, model: str | None, execution, why: list[str]) -> None:
    from datetime import datetime

    from hayai.cli.bench import print_levers

    if not measured:
        console.print(escape(f"speed levers: not measured here for this model (`hayai bench speed"
                             f"{f' -m {model}' if model else ''}` measures them)"), style="dim")
        if why:  # (OpenVINO's verdict, given without measurements)
            console.print(escape(f"execution: plain ({'; '.join(why)})"), style="dim")
        return
    first = measured[0]
    days = sorted({datetime.fromisoformat(m.measured_at).astimezone().date().isoformat() for m in measured})
    when = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
    size = f"{first.width}" if first.width == first.height else first.size
    console.print(escape(f"speed levers (measured here on {when}, {size} px, {first.steps} steps, "
                         f"{first.threads} thread(s)): time as a ratio to the exact run"))
    print_levers(measured)
    console.print(escape(f"execution: {', '.join(sorted(execution)) or 'plain'} ({'; '.join(why)})"),
                  style=None if execution else "dim")


def _legend(strategies) -> None:
    """What each placement and switch shown means, in the words of A1111's flags."""
    from hayai.memory.strategies import IN_A1111_WORDS

    parts = dict.fromkeys(part for s in strategies for part in s.name.split("+"))
    if any(s.placement != "cpu" and s.dtype == "float32" for s in strategies):
        parts["float32"] = None
    for part in parts:
        words = IN_A1111_WORDS.get("cpu" if part.startswith("cpu-") else part)
        if words:
            console.print(escape(f"  {part}: {words}"), style="dim", soft_wrap=True)


def _dominated(candidate, everyone) -> bool:
    """Another candidate needs no more memory and no more time, and is better at one of them."""
    return any(
        o.peak_bytes <= candidate.peak_bytes and o.seconds <= candidate.seconds
        and (o.peak_bytes < candidate.peak_bytes or o.seconds < candidate.seconds)
        and o.fits >= candidate.fits and o.strategy.lossless >= candidate.strategy.lossless
        for o in everyone
    )


def _facts(model: str | None):
    """(the resolved model, its facts, how to name it)."""
    from hayai.memory.facts import facts_for_source
    from hayai.models.catalog import Catalog
    from hayai.store import Store

    with Store() as store:
        source = Catalog(store).resolve(model)
    return (source, *facts_for_source(source))


def _device(device: str | None, vram: str | None):
    """(the device to plan for, this machine's device it stands for, or None when planning for another)."""
    from hayai.hardware import capped, parse_device_spec, probe

    if device:
        return parse_device_spec(device), None
    here = probe().best
    if vram and not here.accelerator:  # no GPU here: plan for a generic card of that size
        return parse_device_spec(f"{vram} CUDA card"), None
    return (capped(here, parse_size(vram)) if vram else here), here
