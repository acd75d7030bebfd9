"""Predicted vs measured peak memory and time of every execution strategy.

On CUDA: for each real architecture (random weights, real shapes) and each VRAM cap (4/8/12 GB,
enforced with torch.cuda.set_per_process_memory_fraction), run one image at the native resolution under
every strategy, and record the planner's prediction next to the CUDA allocator's measured peak and the
wall time (or the OOM). On a CPU: the same for the tiny pipelines and the CPU strategies, with the
process's peak resident memory above the loaded baseline as the measurement.

    python benchmarks/memory_plans.py [--steps 4] [--archs sd15,sdxl,sd35m] [--caps 4,8,12] [--all-variants]
                                      [--deadline 120] [--out FILE]

By default only each placement's plain variant runs (not its VAE-tiling and split variants, which change
only the decode and the batch), 4 steps (enough for s/step), and a scenario stops starting strategies
after --deadline seconds (the rest are recorded as skipped): every strategy of every scenario would take
hours on one card.

Prints JSON; writes it to benchmarks/results/<machine>.memory_plans.json unless --out says otherwise.
Targets (issue #3): predicted peak within 15% of measured; the chosen plan no slower than 1.1x the
fastest plan that actually fit.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import time
from pathlib import Path

import torch

from hayai.generation.execute import run_batch
from hayai.generation.request import GenerationRequest
from hayai.generation.timing import PhaseTimer
from hayai.hardware import GIB, capped, probe
from hayai.memory.apply import apply_strategy, encode_device, is_out_of_memory
from hayai.memory.facts import facts_from_pipeline
from hayai.memory.planner import PlanRequest, estimate, plan, safety_margin
from hayai.memory.strategies import candidates
from hayai.models.families import Family

ARCH_FAMILY = {"sd15": Family.SD1, "sdxl": Family.SDXL, "sd35m": Family.SD3}


def _rss_peak() -> int:
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def _rss_now() -> int:
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def _reset_rss_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _measure(build, family, strategy, request: GenerationRequest, cuda: bool) -> dict:
    """Build a fresh pipeline, place it, run one batch; peak bytes and seconds (or the OOM)."""
    pipe = build()
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            gc.collect()
            baseline = _rss_now()
            _reset_rss_peak()
        apply_strategy(pipe, strategy)
        timer = PhaseTimer(sync=torch.cuda.synchronize if cuda else None)
        start = timer.now()
        run_batch(pipe, family, request, request.seeds(), timer=timer, emit=lambda e: None, batch=0,
                  total_steps=request.steps, encode_on=encode_device(pipe, strategy))
        seconds = timer.now() - start
        peak = torch.cuda.max_memory_allocated() if cuda else _rss_peak() - baseline
        return {"outcome": "ok", "peak_bytes": int(peak), "seconds": round(seconds, 3)}
    except Exception as error:  # noqa: BLE001 - an OOM is a result here, anything else is re-raised
        if is_out_of_memory(error) or is_out_of_memory(error.__cause__ or error):
            return {"outcome": "oom", "peak_bytes": None, "seconds": None}
        raise
    finally:
        del pipe
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def _scenario(name, build, family, side, steps, device, cuda, *, all_variants=False, deadline=None) -> dict:
    probe_pipe = build()
    facts = facts_from_pipeline(probe_pipe, family)
    del probe_pipe
    shape = PlanRequest(side, side, 1, True, steps)
    the_plan = plan(facts, shape, device)
    request = GenerationRequest(prompt="a lighthouse at dusk", steps=steps, seed=0, width=side, height=side,
                                sampler="Euler" if family is not Family.SD3 else "Euler").resolve(family, (side, side))
    budget = device.free_bytes - safety_margin(device)
    rows = []
    started = time.monotonic()
    for strategy in candidates(device):
        if not all_variants and (strategy.vae_tiling or strategy.split_batch) and strategy != the_plan.strategy:
            continue
        predicted = estimate(facts, shape, device, strategy, budget)
        if deadline is not None and time.monotonic() - started > deadline:
            measured = {"outcome": "skipped: deadline", "peak_bytes": None, "seconds": None}
        else:
            measured = _measure(build, family, strategy, request, cuda)
        error = None
        if measured["peak_bytes"]:
            error = round(predicted.peak_bytes / measured["peak_bytes"] - 1, 3)
        rows.append({"strategy": strategy.name, "predicted_peak_bytes": predicted.peak_bytes,
                     "predicted_seconds": round(predicted.seconds, 3), "predicted_fits": predicted.fits,
                     **{f"measured_{k}": v for k, v in measured.items()}, "peak_error": error})
    ran = [r for r in rows if r["measured_outcome"] == "ok"]
    fastest = min(ran, key=lambda r: r["measured_seconds"]) if ran else None
    chosen = next(r for r in rows if r["strategy"] == the_plan.strategy.name)
    ratio = (chosen["measured_seconds"] / fastest["measured_seconds"]
             if fastest and chosen["measured_outcome"] == "ok" else None)
    return {"scenario": name, "side": side, "steps": steps, "device": device.describe(), "chosen": chosen["strategy"],
            "fastest_that_fit": fastest["strategy"] if fastest else None,
            "chosen_vs_fastest": round(ratio, 3) if ratio else None, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--all-variants", action="store_true", help="also every VAE-tiling and split variant")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per scenario before the rest is skipped")
    parser.add_argument("--archs", default="sd15,sdxl,sd35m")
    parser.add_argument("--caps", default="4,8,12", help="VRAM caps in GiB (CUDA only)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    machine = probe()
    cuda = machine.best.kind == "cuda"
    scenarios = []
    if cuda:
        from hayai.models.architectures import build_architecture

        for arch in args.archs.split(","):
            family = ARCH_FAMILY[arch]
            dtype = getattr(torch, machine.best.half_dtype)
            build = lambda arch=arch, dtype=dtype: build_architecture(arch, device="cpu", dtype=dtype)  # noqa: E731
            side = 512 if arch == "sd15" else 1024
            for cap in (float(c) for c in args.caps.split(",")):
                device = capped(machine.best, int(cap * GIB))
                torch.cuda.set_per_process_memory_fraction(cap * GIB / machine.best.total_bytes)
                scenarios.append(_scenario(f"{arch}@{side} cap {cap:g}GiB", build, family, side, args.steps, device, True,
                                           all_variants=args.all_variants, deadline=args.deadline))
            torch.cuda.set_per_process_memory_fraction(1.0)
    else:
        from hayai.models.tiny import build_tiny_pipeline

        for family in (Family.SD1, Family.SDXL, Family.SD3):
            build = lambda family=family: build_tiny_pipeline(family)  # noqa: E731
            scenarios.append(_scenario(f"tiny-{family.value}@256", build, family, 256, min(args.steps, 4),
                                       machine.cpu, False, all_variants=args.all_variants, deadline=args.deadline))
    report = {"machine": machine.best.describe(), "torch": torch.__version__, "python": platform.python_version(),
              "when": time.strftime("%Y-%m-%d"), "scenarios": scenarios}
    text = json.dumps(report, indent=2)
    print(text)
    out = args.out or Path(__file__).parent / "results" / f"{re.sub(r'[^A-Za-z0-9]+', '-', machine.best.name)}.memory_plans.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
