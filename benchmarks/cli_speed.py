"""Issue 15, item 1: what the CLI costs on a busy CPU, before and after, side by side in one run.

1. Import time: wall seconds of `hayai --help`, `hayai info IMAGE` and `hayai prompt check PROMPT` in a fresh
   process, and whether torch/diffusers got imported (they need neither).
2. Denoising under a CPU hog: the demo model, 20 steps, with 1 thread, with every CPU as a thread (torch's
   default), and with the count hayai now chooses (`hayai.hardware.free_cores`), while one busy-loop
   process per hog runs beside it. Times are compared as ratios (absolute times on shared machines are noise).

Usage: python benchmarks/cli_speed.py [--hogs N] [--steps N] ; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_PROBE = """
import sys, time
t = time.perf_counter()
from hayai.cli.main import main
sys.argv[0] = "hayai"  # main() reads sys.argv (older versions take no argv)
try:
    main()
except SystemExit:
    pass
print("RESULT", time.perf_counter() - t, "torch" in sys.modules, "diffusers" in sys.modules, file=sys.stderr)
"""


def _imports(argv: list[str], home: str, src: str | None) -> dict:
    env = {**os.environ, "HAYAI_HOME": home, "HF_HUB_OFFLINE": "1"}
    if src:
        env["PYTHONPATH"] = src
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    line = next(line for line in proc.stderr.splitlines() if line.startswith("RESULT"))
    _, seconds, torch_loaded, diffusers_loaded = line.split()
    return {"command": "hayai " + argv[0] + (" " + argv[1] if argv[0] in ("prompt", "models") else ""), "process_s": round(wall, 2), "in_main_s": round(float(seconds), 2),
            "imports_torch": torch_loaded == "True", "imports_diffusers": diffusers_loaded == "True"}


def _hog(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _denoise_seconds(threads: int, steps: int, out: str) -> float:
    import torch

    from hayai.generation.engine import Engine
    from hayai.generation.request import GenerationRequest

    torch.set_num_threads(threads)
    result = Engine(device="cpu").generate(GenerationRequest(prompt="a red circle", steps=steps, seed=1, output_dir=out))
    return result.timings["denoise"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hogs", type=int, default=1, help="busy-loop processes beside the run")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--before-src", help="a `src` folder of an older hayai, to time its imports side by side")
    args = parser.parse_args()
    from hayai.cli.output import silence_library_progress
    from hayai.hardware import free_cores

    silence_library_progress()

    with tempfile.TemporaryDirectory() as home:
        os.environ["HAYAI_HOME"] = home
        from PIL import Image, PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64")
        image = Path(home) / "a.png"
        Image.new("RGB", (8, 8)).save(image, pnginfo=info)
        commands = (["--help"], ["info", str(image)], ["prompt", "check", "a [dog:cat:0.5]"])
        imports = {"now": [_imports(argv, home, None) for argv in commands]}
        if args.before_src:
            imports["before"] = [_imports(argv, home, args.before_src) for argv in commands]

        cpus = len(os.sched_getaffinity(0))
        _denoise_seconds(1, 2, home)  # warm-up: weights in the page cache, kernels chosen
        stop = multiprocessing.Event()
        hogs = [multiprocessing.Process(target=_hog, args=(stop,), daemon=True) for _ in range(args.hogs)]
        for hog in hogs:
            hog.start()
        time.sleep(2)
        try:
            chosen = free_cores()
            runs = {f"threads_{n}": _denoise_seconds(n, args.steps, home) for n in sorted({1, cpus, chosen})}
        finally:
            stop.set()
            for hog in hogs:
                hog.join()
    default = runs[f"threads_{cpus}"]
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {cpus} CPUs, load {os.getloadavg()[0]:.2f}",
        "imports": imports,
        "denoise_under_hog": {"hogs": args.hogs, "steps": args.steps, "chosen_threads": chosen,
                              **{k: round(v, 2) for k, v in runs.items()},
                              "default_over_chosen": round(default / runs[f"threads_{chosen}"], 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
