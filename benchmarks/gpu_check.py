"""The GPU check of issue 16: one command that turns a lent GPU's minutes into the figures that calibrate the planner.

    bash benchmarks/gpu_check.sh                         # on the GPU machine (installs .whl/, then runs this)
    python benchmarks/gpu_check.py --dry-run [--out DIR] # here: every stage on the CPU with tiny models, < 1 minute

Stages (benchmarks/gpu_stages.py), in order, each in a forked process killed at its deadline:
  facts     torch/CUDA versions, the device, hayai's `hardware.probe()` view, where each package came from
  link      host<->device copies (pinned and pageable, GB/s), SDPA backends, kernel-launch overhead, bf16 matmul rate
  resident  arch:sd15@512, arch:sdxl@1024, arch:sd35m@1024 resident, built on the GPU: placement and per-phase peaks
            against the planner's estimate; s/step at 0.5x, 1x and 1.5x the native size; bytes left after teardown
  offload   sdxl@1024 under each offload placement: placement, phase and host peaks, s/step, bytes left after teardown
  ladder    --vram 8GB (sd35m) and 4GB (sdxl) with `resident` forced: the out-of-memory step-downs and the final strategy
  train     LoRA training of arch:sd15 at 512 px under an 8 GB cap on 8 shapes images: caching peak, step peak, samples
  pytest    `pytest -m gpu` on the test files that have GPU-marked tests: its summary line
  levers    (only if time remains) the speed levers at native sizes (sd15@512, sdxl@1024, sd35m@1024: step
            caching, token merging, channels_last, block caching): ratios to the exact run and PSNR to its image
  compile   (only if time remains) regional compilation of the sd15 UNet: eager vs compiled s/step

Each result is one JSON line in $OUT/gpu_check.jsonl, written as it is measured; a stage past its deadline is
recorded as {"stage": ..., "status": "timeout"} and the next one starts. At the end: $OUT/summary.json (every
line, and each stage's status) and $OUT/time_model.json, a time model fitted from the resident stage's s/step
in the form hayai.memory.costs reads: a proposal, committed to benchmarks/results/ only after a real run.
$OUT defaults to ./gpu_check_out. Stages that need CUDA are recorded as "skipped (no CUDA)" without one,
except in --dry-run, where they run their CPU stand-ins (tiny pipelines, host copies, an injected OOM).
"""

from __future__ import annotations

import os

# the driver forks a process per stage and must never initialise CUDA itself: with this, torch asks NVML
# (not the CUDA runtime) whether a GPU is there, so importing the libraries leaves CUDA untouched
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_stages import STAGES, StageContext  # noqa: E402

STAGE_NAMES = [stage.name for stage in STAGES]
BUDGET_S = 420  # whole run on a GPU (the lent machine's command limit is 10 minutes, the target 8)
DRY_DEADLINE_S = 40  # every stage's deadline in a dry run
OPTIONAL_MIN_S = {False: 45, True: 5}  # an optional stage starts only with this much of the budget left (dry: True)


# -- running one stage -------------------------------------------------------------------------------------
def _child(name: str, dry: bool, deadline_at: float, jsonl: str, scratch: str, tiny: dict) -> None:
    """A stage's process: its own process group (so a kill takes its subprocesses too); one status line at the end."""
    os.setpgrp()
    import torch

    stage = next(s for s in STAGES if s.name == name)
    if dry:
        torch.set_num_threads(1)  # the tiny models run several times faster without thread hand-offs
    cuda = not dry and torch.cuda.is_available()
    ctx = StageContext(name, dry, cuda, deadline_at, Path(jsonl), Path(scratch), tiny)
    start = time.perf_counter()
    if stage.cuda and not cuda and not dry:
        ctx.emit(status="skipped (no CUDA)")
        return
    try:
        stage.run(ctx)
    except BaseException as error:  # noqa: BLE001 - recorded, and the next stage still runs
        ctx.emit(status="error", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-4000:],
                 seconds=round(time.perf_counter() - start, 2))
        sys.exit(1)
    ctx.emit(status="ok", seconds=round(time.perf_counter() - start, 2))


def _start_method() -> str:
    """fork (the libraries are imported once, here) unless CUDA was initialised in this process after all."""
    import torch

    return "spawn" if torch.cuda.is_initialized() else "fork"


def run_stage(name: str, limit: float, *, dry: bool, jsonl: Path, scratch: Path, tiny: dict) -> str:
    """Run stage `name` in a process of its own, killed after `limit` seconds; its status."""
    sys.stdout.flush()
    sys.stderr.flush()  # (a forked child would flush a copy of what is buffered)
    start = time.monotonic()
    process = multiprocessing.get_context(_start_method()).Process(
        target=_child, args=(name, dry, start + limit, str(jsonl), str(scratch), tiny), name=f"gpu_check-{name}")
    process.start()
    process.join(limit)
    seconds = round(time.monotonic() - start, 2)
    killed = process.is_alive()
    if killed:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # not yet its own group
            process.kill()
        process.join()
    # a stage that wrote its status finished, even if its process was still exiting at the deadline
    status = next((line["status"] for line in reversed(read_lines(jsonl)) if line.get("stage") == name and "status" in line
                   and "item" not in line), None)
    if status is None and killed:
        _append(jsonl, {"stage": name, "status": "timeout", "deadline_s": limit, "seconds": seconds})
        return "timeout"
    if status is None:  # died without a word (a crash in native code, the OOM killer)
        _append(jsonl, {"stage": name, "status": "error", "error": f"exit code {process.exitcode}", "seconds": seconds})
        return "error"
    return status


def _append(jsonl: Path, record: dict) -> None:
    """The driver's own line (a stage's timeout or crash), on a line of its own even after a killed writer's half line."""
    torn = jsonl.is_file() and jsonl.stat().st_size > 0 and not jsonl.read_bytes().endswith(b"\n")
    with open(jsonl, "a", encoding="utf-8") as f:
        f.write(("\n" if torn else "") + json.dumps(record) + "\n")
    print(f"[{record['stage']}] {record['status']}", file=sys.stderr, flush=True)


def read_lines(jsonl: Path) -> list[dict]:
    """Every whole JSON line (a line cut short by a kill is left out)."""
    lines = []
    for text in jsonl.read_text(encoding="utf-8").splitlines() if jsonl.is_file() else []:
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def _preload() -> None:
    """Import what every stage needs once, so each forked stage starts at once (imports take seconds)."""
    import diffusers
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import hayai.generation.engine  # noqa: F401
    import hayai.models.architectures  # noqa: F401
    import hayai.training.loop  # noqa: F401

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations inside the libraries: noise in the log

    for name in ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline", "AutoencoderKL"):
        getattr(diffusers, name)


def _tiny_folders(scratch: Path) -> dict:
    """The tiny pipelines a dry run uses, saved once (in a child: the parent runs no torch kernels before forking)."""
    from hayai.models.tiny import TINY_FAMILIES

    folders = {family.value: str(scratch / f"tiny-{family.value}") for family in TINY_FAMILIES}
    process = multiprocessing.get_context(_start_method()).Process(
        target=_save_tiny, args=(folders,), name="gpu_check-tiny")
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit("could not build the tiny pipelines for the dry run")
    return folders


def _save_tiny(folders: dict) -> None:
    from hayai.models.tiny import save_tiny_pipeline

    for family, folder in folders.items():
        save_tiny_pipeline(family, Path(folder))


# -- the time model ----------------------------------------------------------------------------------------
def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y on x; through the origin when the intercept would be negative."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if n > 1 and sxx > 0:
        slope = sum((x - mx) * (y - my) for x, y in points) / sxx
        if slope > 0 and my - slope * mx >= 0:
            return slope, my - slope * mx
    return sum(x * y for x, y in points) / sum(x * x for x, _ in points), 0.0


def fit_time_model(lines: list[dict]) -> dict | None:
    """`step = FLOPs / (peak x e[kind]) + launches[kind] x t_launch` fitted to the resident stage's timings,
    in the keys of hayai.memory.costs.TIME_MODEL (what benchmarks/results/time_model.json holds)."""
    from hayai.memory.costs import time_model

    points = [line for line in lines if line.get("fit_point") and line.get("s_per_step")]
    if not points:
        return None
    current = time_model()
    device_class, tflops = points[0]["device_class"], points[0]["device_tflops"]
    launch = next((line["launch_seconds"] for line in lines if line.get("item") == "compute"), 0.0)
    fits, notes = {}, []
    for kind in ("unet", "mmdit"):
        mine = [p for p in points if p["kind"] == kind]
        if not mine:
            continue
        slope, intercept = _line([(p["flops_per_step"], p["s_per_step"]) for p in mine])
        efficiency = 1 / (slope * tflops * 1e12)
        if efficiency > 1:
            notes.append(f"{kind}: fitted efficiency {efficiency:.3g} > 1 (steps too small to be compute-bound); 1.0 kept")
        fits[kind] = {"efficiency": round(min(efficiency, 1.0), 4), "intercept_s": round(intercept, 6),
                      "launches": round(intercept / launch) if launch > 0 else 0,
                      "points": [f"{p['arch']}@{p['size']}: {p['s_per_step']} s/step" for p in mine]}
    per_arch = {}
    for arch in dict.fromkeys(p["arch"] for p in points):
        slope, intercept = _line([(p["flops_per_step"], p["s_per_step"]) for p in points if p["arch"] == arch])
        per_arch[arch] = {"efficiency": round(1 / (slope * tflops * 1e12), 4), "intercept_s": round(intercept, 6)}
    for p in points:
        fit = fits[p["kind"]]
        p["fitted_s_per_step"] = round(p["flops_per_step"] / (tflops * 1e12 * fit["efficiency"]) + fit["intercept_s"], 6)
    machine = next((line.get("device", {}).get("name") for line in lines if line.get("item") == "machine"), None) or "cpu"
    sizes = ", ".join(f"{p['arch']}@{p['size']}" for p in points)
    return {
        "efficiency": {device_class: {**current["efficiency"][device_class], **{k: v["efficiency"] for k, v in fits.items()}}},
        "launch_seconds": {device_class: launch},
        "launches_per_step": {**current["launches_per_step"], **{k: v["launches"] for k, v in fits.items()}},
        "calibrated": True,
        "fitted_from": (f"benchmarks/gpu_check.py stage 'resident' on {machine}, {time.strftime('%Y-%m-%d')}: eager s/step "
                        f"(batch 1 with CFG, random-weight architectures, resident) at {sizes}; launch_seconds is the "
                        "measured per-op overhead of stage 'link'; launches = intercept / launch_seconds"),
        "device_class": device_class, "device_tflops": tflops, "fits": fits, "per_arch": per_arch, "notes": notes,
        "points": [{k: p[k] for k in ("arch", "size", "kind", "flops_per_step", "s_per_step", "predicted_s_per_step",
                                      "fitted_s_per_step")} for p in points],
        "proposal": "review, then commit as benchmarks/results/time_model.json (hayai.memory.costs reads it)",
    }


# -- the driver --------------------------------------------------------------------------------------------
def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU with tiny models (< 1 minute)")
    parser.add_argument("--out", type=Path, help="results folder [$OUT, else ./gpu_check_out]")
    parser.add_argument("--stages", default=",".join(STAGE_NAMES), help=f"which stages, in this order [{','.join(STAGE_NAMES)}]")
    parser.add_argument("--deadline", action="append", default=[], metavar="STAGE=SECONDS",
                        help="override a stage's deadline (repeat for several)")
    parser.add_argument("--budget", type=float, help=f"seconds for the whole run; optional stages use what is left [{BUDGET_S}]")
    args = parser.parse_args(argv)
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in args.stages if s not in STAGE_NAMES]
    deadlines = {}
    for item in args.deadline:
        name, _, seconds = item.partition("=")
        if name not in STAGE_NAMES or not seconds:
            parser.error(f"--deadline {item!r}: expected STAGE=SECONDS with STAGE one of {', '.join(STAGE_NAMES)}")
        deadlines[name] = float(seconds)
    if unknown:
        parser.error(f"--stages: unknown {', '.join(unknown)}; the stages are {', '.join(STAGE_NAMES)}")
    args.deadlines = deadlines
    return args


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    out = Path(args.out or os.environ.get("OUT") or "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "gpu_check.jsonl"
    jsonl.unlink(missing_ok=True)
    budget = args.budget if args.budget is not None else (len(STAGES) * DRY_DEADLINE_S if args.dry_run else BUDGET_S)
    started = time.monotonic()
    statuses = {}
    with tempfile.TemporaryDirectory(prefix="hayai-gpu-check-") as scratch:
        scratch = Path(scratch)
        os.environ["HAYAI_HOME"] = str(scratch / "home")  # hayai's history, caches and LoRA catalog stay out of the user's
        _preload()
        chosen = [stage for stage in STAGES if stage.name in args.stages]
        tiny = _tiny_folders(scratch) if args.dry_run and any(stage.models for stage in chosen) else {}
        for stage in chosen:
            name = stage.name
            limit = args.deadlines.get(name, DRY_DEADLINE_S if args.dry_run else stage.deadline)
            if stage.optional:
                left = budget - (time.monotonic() - started)
                limit = min(limit, left)
                if limit < OPTIONAL_MIN_S[args.dry_run]:
                    _append(jsonl, {"stage": name, "status": "skipped (no time left)", "left_s": round(left, 1)})
                    statuses[name] = "skipped (no time left)"
                    continue
            statuses[name] = run_stage(name, limit, dry=args.dry_run, jsonl=jsonl, scratch=scratch, tiny=tiny)
    lines = read_lines(jsonl)
    summary = {"dry_run": args.dry_run, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.monotonic() - started, 1),
               "budget_s": budget, "stages": statuses, "lines": lines}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    fitted = fit_time_model(lines)
    if fitted is not None:
        (out / "time_model.json").write_text(json.dumps(fitted, indent=1) + "\n")
    print(json.dumps({"stages": statuses, "seconds": summary["seconds"], "out": str(out)}, indent=1))
    return summary


if __name__ == "__main__":
    main()
