"""Host memory of an OpenVINO run beside the plain one: what the planner must leave room for.

    python benchmarks/openvino_memory.py                      # arch:sd15 at 256 px, 2 steps (~3 min on 2 cores)
    python benchmarks/openvino_memory.py --model arch:sdxl --size 512

Three processes, one after the other, each a fresh `Engine` generating one image on the CPU with 1 thread:
`plain` (the torch UNet), `convert` (execution lever `openvino` with an empty cache: the UNet is converted,
saved, compiled, then run) and `cached` (the same with the conversion on disk: compiled and run). Each reports
its peak resident memory (VmHWM) and its resident memory at the end (VmRSS); the extra of `convert` and
`cached` over `plain` is what OpenVINO costs in host memory, beside the model's float32 UNet weight bytes.

Prints JSON; merges it into benchmarks/results/openvino_memory_<machine>.json (--no-write to skip).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import describe_machine, publish

CASES = ("plain", "convert", "cached")


def child(case: str, model: str, size: int, steps: int) -> dict:
    import time

    import torch

    from proc_memory import status_kib

    from hayai.generation.engine import Engine
    from hayai.generation.request import GenerationRequest

    torch.set_num_threads(1)
    engine = Engine(device="cpu")
    request = GenerationRequest(prompt="a lighthouse at dusk", model=model, width=size, height=size, steps=steps, seed=1)
    execution = frozenset() if case == "plain" else frozenset({"openvino"})
    start = time.perf_counter()
    result = engine.generate(request, engine.run_options(save=False, execution=execution))
    events = [e for e in result.events if e.get("event") == "openvino"]
    weights = (Path(events[0]["cache"]) / "unet.bin").stat().st_size if events else None
    return {"case": case, "seconds": round(time.perf_counter() - start, 1), "peak_bytes": status_kib("VmHWM") * 1024,
            "end_bytes": status_kib("VmRSS") * 1024, "converted_weights_bytes": weights,
            "openvino": events[0] if events else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="arch:sd15")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.child:
        sys.stdout.write(json.dumps(child(args.child, args.model, args.size, args.steps)) + "\n")
        return
    rows = {}
    with tempfile.TemporaryDirectory(prefix="hayai-ov-memory-") as home:
        env = {**os.environ, "HAYAI_HOME": home, "OMP_NUM_THREADS": "1"}
        for case in CASES:
            out = subprocess.run([sys.executable, __file__, "--child", case, "--model", args.model, "--size",
                                  str(args.size), "--steps", str(args.steps)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            rows[case] = json.loads(out.strip().splitlines()[-1])
            print(f"{case}: peak {rows[case]['peak_bytes'] / 2**30:.2f} GiB", file=sys.stderr)
    plain = rows["plain"]["peak_bytes"]
    stem, machine = describe_machine("cpu", 1)
    weights = rows["convert"]["converted_weights_bytes"]
    extra = {case: rows[case]["peak_bytes"] - plain for case in ("convert", "cached")}
    result = {"machine": machine, "model": args.model, "size": args.size, "steps": args.steps, "runs": rows,
              "extra_over_plain_bytes": extra,
              "extra_over_converted_weights": {case: round(value / weights, 2) for case, value in extra.items()}}
    publish(result, f"openvino_memory_{stem}", not args.no_write)


if __name__ == "__main__":
    main()
