"""Switching models back and forth: resident memory over 50 switches, and a cached switch against a load.

    python benchmarks/model_switching.py [--switches 50] [--model REF ...] [--write]

The models (default: the built-in demo model, a copy of its folder, which is another model to the
engine, and the tiny SDXL pipeline, saved to a temp folder) are used in turn, A B C A B C ..., one
`Engine.generate` each (2 steps, 64 px, not saved). Each mode runs in a fresh process of its own:
- `cached`: `Engine(resident_bytes=None)`, the default budget: after the first round every switch reuses
  a resident model;
- `reload`: `Engine(resident_bytes=0)`: only the active model is kept, every switch loads anew (hayai
  before the resident cache, and A1111 with one checkpoint in memory).
Reported per mode: the process's resident set (psutil, default glibc allocator: what a user sees) after
each switch, its growth from switch 10 to the last, the seconds of each switch's `Engine.load` (the
switch itself) and of each whole request, and how many loads ran (from the engine's load events). The
ratio is the median cached switch over the median cold load (the first use of each model in `cached`).
Prints JSON; `--write` stores it in results/model_switching_<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import describe_machine, publish  # noqa: E402

MODES = {"cached": None, "reload": 0}  # mode -> Engine(resident_bytes=...)


def _models(scratch: Path) -> list[str]:
    from hayai.demo import BUILTIN_MODEL
    from hayai.models.families import Family
    from hayai.models.tiny import save_tiny_pipeline

    copy = scratch / "hayai-shapes-copy"
    shutil.copytree(BUILTIN_MODEL, copy)
    return [str(BUILTIN_MODEL), str(copy), str(save_tiny_pipeline(Family.SDXL, scratch / "tiny-sdxl"))]


def run_mode(mode: str, models: list[str], switches: int) -> dict:
    """`switches` requests cycling through `models` on one engine, in this process."""
    import psutil

    from hayai.generation.engine import Engine
    from hayai.generation.request import GenerationRequest

    process = psutil.Process()
    engine = Engine(device="cpu", resident_bytes=MODES[mode])
    loads: list[str] = []
    on_event = lambda e: loads.append(e.detail) if e.phase == "load" and e.done == 0 else None  # noqa: E731
    rss, switch_s, request_s, loaded = [], [], [], []
    rss_before = process.memory_info().rss
    for index in range(switches):
        model = models[index % len(models)]
        before = len(loads)
        start = time.perf_counter()
        engine.load(model, progress=on_event)  # the switch itself
        switched = time.perf_counter()
        engine.generate(GenerationRequest("a red circle", model=model, steps=2, width=64, height=64, seed=index,
                                          sampler="Euler"), save=False)
        request_s.append(round(time.perf_counter() - start, 4))
        switch_s.append(round(switched - start, 4))
        loaded.append(len(loads) > before)
        rss.append(process.memory_info().rss)
    cold = [s for s, was_loaded in zip(switch_s, loaded) if was_loaded]
    warm = [s for s, was_loaded in zip(switch_s, loaded) if not was_loaded]
    first, last = min(10, switches) - 1, switches - 1
    return {
        "resident_bytes_budget": engine._resident.budget_bytes, "loads": len(loads), "resident_at_end": engine.resident(),
        "rss_before_bytes": rss_before, "rss_after_each_switch_bytes": rss,
        "rss_growth_switch_10_to_last_bytes": rss[last] - rss[first],
        "rss_growth_per_switch_after_10_bytes": round((rss[last] - rss[first]) / max(last - first, 1)),
        "switch_s": switch_s, "request_s": request_s, "switch_loaded": loaded,
        "median_load_switch_s": round(statistics.median(cold), 4) if cold else None,
        "median_cached_switch_s": round(statistics.median(warm), 4) if warm else None,
        "median_request_s": round(statistics.median(request_s), 4),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--switches", type=int, default=50)
    parser.add_argument("--model", action="append", help="a model to switch between (repeat; default: see above)")
    parser.add_argument("--write", action="store_true", help="store in results/model_switching_<machine>.json")
    parser.add_argument("--mode", choices=sorted(MODES), help=argparse.SUPPRESS)  # internal: one mode's process
    parser.add_argument("--models-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import torch

    torch.set_num_threads(1)
    if args.mode:
        print(json.dumps(run_mode(args.mode, json.loads(args.models_json), args.switches)))
        return {}
    results = {}
    with tempfile.TemporaryDirectory(prefix="hayai-switch-") as scratch:
        models = args.model or _models(Path(scratch))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HAYAI_HOME": str(Path(scratch) / "home")}
        for mode in MODES:
            print(f"running {mode} ...", file=sys.stderr)
            done = subprocess.run([sys.executable, __file__, "--mode", mode, "--models-json", json.dumps(models),
                                   "--switches", str(args.switches)], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"mode {mode} failed:\n{done.stderr[-4000:]}")
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    cached = results["cached"]
    stem, description = describe_machine("cpu", 1)
    cold_loads = [s for s, was_loaded in zip(cached["switch_s"], cached["switch_loaded"]) if was_loaded]
    output = {
        "what": "model switching: RSS over switches and a cached switch vs a cold load (issue 17)",
        "machine": description, "torch": torch.__version__, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "models": [Path(m).name for m in models], "switches": args.switches,
        "ratio_cached_switch_to_cold_load": round(cached["median_cached_switch_s"] / statistics.median(cold_loads), 5),
        "ratio_request_cached_to_reload": round(cached["median_request_s"] / results["reload"]["median_request_s"], 4),
        "modes": results,
    }
    return publish(output, f"model_switching_{stem}", args.write)


if __name__ == "__main__":
    main()
