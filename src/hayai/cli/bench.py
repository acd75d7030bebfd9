"""`hayai bench speed`: the speed levers against the exact run on this machine, kept for `hayai plan`."""

from __future__ import annotations

import json
import math
import sys
from typing import Optional

import typer

from hayai.cli.app import App
from hayai.cli.output import console, err_console, escape
from hayai.cli.request_options import RunFlags, run_flags

app = App(help="Measure speed on this machine.", no_args_is_help=True)

_LEVERS_HELP = ("Comma-separated levers: exact, or request fields joined by '+', e.g. step_cache=3, speed=balanced, "
                "step_cache=3+token_merging=0.5 (exact is always measured: every ratio is to it).")


@app.command("speed")
@run_flags(only=("device", "threads", "as_json", "quiet"))
def speed(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or path \\[the default model]."),
    size: Optional[int] = typer.Option(None, "--size", help="Width and height in pixels \\[the model's native size]."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps \\[the model card's, else 20]."),
    levers: str = typer.Option("exact,speed=balanced,step_cache=2,step_cache=4,token_merging=0.5", "--levers",
                               help=_LEVERS_HELP),
    repeats: int = typer.Option(3, "--repeats", help="Timed rounds; each runs every lever once, in a rotated order."),
    quality: bool = typer.Option(True, "--quality/--no-quality",
                                 help="Also measure quality: distance to the exact run's images (PSNR, SSIM), and "
                                      "adherence on the demo model. \\[--quality]"),
    seeds: int = typer.Option(2, "--seeds", help="Demo model: seeds per prompt of the adherence prompt set."),
    flags: RunFlags = None,
) -> None:
    """Time each speed lever against the exact run (same prompt and seed, interleaved rounds) and measure
    what it costs in quality; the figures are kept, and `hayai plan -m MODEL` shows them.

    Quality on the demo model scores its 60 adherence prompts x --seeds for every lever (about a minute
    each on 2 CPU cores); on another model it is the distance of the timed image to the exact run's.
    channels_last, compile and openvino (execution levers, not request fields) are measured too when
    named; the engine then uses channels_last for this model only where it paid here, and compile and
    openvino only where their per-step gain on a request's images pays back the compilation or conversion
    still owed (the bench compiles, or converts and caches, in untimed runs, and keeps the compile time).
    """
    from hayai.speed.bench import bench_speed, lever_list

    chosen = lever_list(levers)  # a bad lever fails before the engine loads anything
    engine = flags.engine()
    log = (lambda line: err_console.print(escape(line), style="dim")) if flags.show_progress else None
    bench = bench_speed(engine, model=model, levers=chosen, size=size, steps=steps, repeats=repeats, quality=quality,
                        seeds=seeds, log=log)
    if flags.as_json:
        sys.stdout.write(json.dumps(bench.to_dict(), indent=2) + "\n")
        return
    first = bench.measurements[0]
    console.print(escape(f"{first.model} at {first.size}, {first.steps} steps, {repeats} rounds on "
                         f"{engine.device_spec.describe()}, {first.threads} thread(s)"))
    print_levers(bench.measurements)
    console.print(escape(f"quality: {bench.quality}"), style="dim")
    console.print(escape(f"kept for `hayai plan -m {model or first.model}`"), style="dim")


def print_levers(measurements) -> None:
    """The table `hayai bench speed` and `hayai plan` show: per lever, time as ratios to the exact run, and quality."""
    from rich.table import Table

    table = Table("lever", "denoise", "end to end", "adherence", "PSNR", "SSIM", box=None)
    exact = measurements[0]
    for m in measurements:
        table.add_row(escape(m.lever), f"{m.denoise_ratio:.2f}x", f"{m.end_to_end_ratio:.2f}x",
                      _adherence(m, exact), _psnr(m), "-" if m.ssim is None else f"{m.ssim:.3f}")
    console.print(table)


def _adherence(m, exact) -> str:
    if m.adherence_points is None:
        return "not measured"
    if m is exact or exact.adherence_points is None:
        return f"{m.adherence_points:.1f}"
    return f"{m.adherence_points:.1f} ({m.adherence_points - exact.adherence_points:+.1f})"


def _psnr(m) -> str:
    if m.psnr_db is None:
        return "-"
    return "identical" if math.isinf(m.psnr_db) else f"{m.psnr_db:.1f} dB"
