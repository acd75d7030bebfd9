"""Speed levers against the exact run, side by side: time on a real architecture, quality on the demo model.

    python benchmarks/speed_levers.py --part time      # arch:sd15 at 256 px, 20 steps (~10 min on 2 cores)
    python benchmarks/speed_levers.py --part quality   # the demo model: adherence, PSNR/SSIM (~6 min)

A lever is `exact` or request fields joined by '+': `step_cache=3`, `token_merging=0.5`, `speed=balanced`,
`step_cache=3+token_merging=0.5`, `tiny_vae=random` (TAESD's architecture with random weights: time only).
Every lever runs the same prompts and seeds as the exact run.

time:    `Engine.generate` on `--model` (random weights of the real architecture: its time is the real
         model's) at `--size`, `--steps` (the model's default sampler). After one untimed warm-up run,
         `--repeats` rounds run every lever once, in an order rotated each round, so drift on a shared
         machine hits all alike. Per lever: median denoising seconds (the engine's phase timer) and
         end-to-end seconds (the whole call: prompt encoding, denoising, decoding), and the medians of
         their per-round ratios to the exact run of the same round (< 1: faster); the same for this
         process's CPU time (end to end, and per denoising step between the first and the last step's
         end), which other work on a shared machine disturbs less than wall time.
quality: `hayai.demo.adherence.evaluate` on the shipped demo model (its card's steps, CFG and sampler)
         for every lever: adherence per attribute and their mean in points (percent), and the distance of
         every image to the exact run's image of the same prompt and seed (mean PSNR in dB, mean SSIM).
         The demo model has no attention at its full latent resolution, so token merging changes nothing
         there (as its figures show).

The measuring is `hayai.speed.bench`, which `hayai bench speed` runs too; the time part's figures are also
kept in hayai's store (as `hayai bench speed --no-quality` keeps them), so `hayai plan -m MODEL` shows them.
Prints JSON; merges it into benchmarks/results/speed_levers_<machine>.json (--out FILE, --no-write).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, describe_machine

from hayai.speed.bench import DEFAULT_LEVERS, PROMPT, bench_speed, demo_quality, lever_list  # noqa: E402


def measure_time(levers: list[str], *, model: str, size: int, steps: int, repeats: int, seed: int) -> dict:
    """`hayai bench speed --no-quality` on the CPU: the figures are also kept for `hayai plan`."""
    from hayai.generation.engine import Engine

    bench = bench_speed(Engine(device="cpu"), model=model, levers=levers, size=size, steps=steps, repeats=repeats,
                        quality=False, seed=seed, log=lambda line: print(line, file=sys.stderr))
    return {"model": model, "size": size, "steps": steps, "repeats": repeats, "prompt": PROMPT, "seed": seed,
            "levers": {name: detail["time"] for name, detail in bench.details.items()}}


def measure_quality(levers: list[str], *, seeds: int) -> dict:
    rows = demo_quality(levers, seeds=seeds, log=lambda line: print(line, file=sys.stderr))
    return {"model": "hayai-shapes (built-in demo model)", "seeds": list(range(seeds)), "levers": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("time", "quality"), action="append", required=True)
    parser.add_argument("--levers", default=DEFAULT_LEVERS, help=f"comma-separated [{DEFAULT_LEVERS}]")
    parser.add_argument("--model", default="arch:sd15")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=2, help="quality: seeds per prompt of the demo prompt set [2]")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    parser.add_argument("--label", default="", help="added to the result's key, so runs of other levers are kept")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from hayai.errors import RequestError

    try:
        levers = lever_list(args.levers)
    except RequestError as error:
        parser.error(str(error))
    stem, machine = describe_machine("cpu", args.threads)
    result: dict = {}
    if "time" in args.part:
        key = f"time:{args.model}@{args.size}x{args.steps}" + (f":{args.label}" if args.label else "")
        result[key] = measure_time(levers, model=args.model, size=args.size, steps=args.steps, repeats=args.repeats,
                                   seed=args.seed)
    if "quality" in args.part:
        result["quality:demo" + (f":{args.label}" if args.label else "")] = measure_quality(levers, seeds=args.seeds)
    for entry in result.values():  # each measurement names its machine and conditions (a file keeps several)
        entry.update({"machine": machine, "note": args.note, "command": " ".join(sys.argv)})
    print(json.dumps(result, indent=2))
    if not args.no_write:
        merge_results(args.out or RESULTS / f"speed_levers_{stem}.json", result)
    return result


def merge_results(out: Path, result: dict) -> None:
    """Add `result`'s measurements to the file `out`, replacing those of the same key."""
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged.update(result)
    out.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
