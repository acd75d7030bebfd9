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

Prints JSON; merges it into benchmarks/results/speed_levers_<machine>.json (--out FILE, --no-write).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, describe_machine

DEFAULT_LEVERS = "exact,step_cache=2,step_cache=3,step_cache=4,token_merging=0.5,step_cache=3+token_merging=0.5"
PROMPT = "a photo of a red fox in a snowy forest, detailed, sharp focus"


def parse_lever(text: str) -> dict:
    """'exact' -> {}; 'step_cache=3+token_merging=0.5' -> the request fields, typed by the field table.
    `tiny_vae=random` is an AutoencoderTiny of TAESD's architecture with random weights (for time only)."""
    from hayai.generation.fields import FIELD

    if text == "exact":
        return {}
    fields = {}
    for part in text.split("+"):
        name, _, value = part.partition("=")
        spec = FIELD.get(name)
        if spec is None or not value:
            raise SystemExit(f"lever {text!r}: {part!r} is not FIELD=VALUE of a request field")
        fields[name] = _random_taesd() if (name, value) == ("tiny_vae", "random") else (
            {"int": int, "float": float}.get(spec.type, str)(value))
    return fields


def _random_taesd() -> str:
    """A folder with an AutoencoderTiny of TAESD's architecture (diffusers' defaults) and random weights."""
    import tempfile

    import torch
    from diffusers import AutoencoderTiny

    folder = Path(tempfile.gettempdir()) / "hayai-bench-random-taesd"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(folder)
    return str(folder)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def measure_time(levers: list[str], *, model: str, size: int, steps: int, repeats: int, seed: int) -> dict:
    from hayai.generation.engine import Engine
    from hayai.generation.request import GenerationRequest

    engine = Engine(device="cpu")
    requests = {name: GenerationRequest(PROMPT, model=model, steps=steps, width=size, height=size, seed=seed,
                                        **parse_lever(name)) for name in levers}
    engine.generate(GenerationRequest(PROMPT, model=model, steps=2, width=size, height=size, seed=seed), save=False)
    runs: dict[str, list[dict]] = {name: [] for name in levers}
    resolved = {}
    for round_ in range(repeats):
        order = levers[round_ % len(levers):] + levers[: round_ % len(levers)]
        for name in order:
            stamps: list[float] = []  # process CPU seconds at the end of every denoising step

            def on_event(event, stamps=stamps):
                if event.phase == "denoise":
                    stamps.append(time.process_time())

            start, start_cpu = time.perf_counter(), time.process_time()
            result = engine.generate(requests[name], save=False, progress=on_event)
            runs[name].append({"end_to_end": time.perf_counter() - start, "denoise": result.timings["denoise"],
                               "decode": result.timings.get("vae_decode", 0.0),
                               "end_to_end_cpu": time.process_time() - start_cpu,
                               "step_cpu": (stamps[-1] - stamps[0]) / (len(stamps) - 1)})
            resolved[name] = result.request
            print(f"round {round_ + 1}/{repeats} {name}: {runs[name][-1]['end_to_end']:.1f} s", file=sys.stderr)
    rows = {}
    for name in levers:
        denoise_ratios = [run["denoise"] / base["denoise"] for run, base in zip(runs[name], runs["exact"])]
        e2e_ratios = [run["end_to_end"] / base["end_to_end"] for run, base in zip(runs[name], runs["exact"])]
        cpu_ratios = [run["end_to_end_cpu"] / base["end_to_end_cpu"] for run, base in zip(runs[name], runs["exact"])]
        step_ratios = [run["step_cpu"] / base["step_cpu"] for run, base in zip(runs[name], runs["exact"])]
        rows[name] = {
            "request": {k: getattr(resolved[name], k) for k in ("speed", "step_cache", "token_merging", "sampler",
                                                                 "schedule_type", "steps", "cfg_scale")},
            "denoise_seconds": _median([r["denoise"] for r in runs[name]]),
            "end_to_end_seconds": _median([r["end_to_end"] for r in runs[name]]),
            "decode_seconds": _median([r["decode"] for r in runs[name]]),
            "denoise_ratio": _median(denoise_ratios),
            "end_to_end_ratio": _median(e2e_ratios),
            "denoise_speedup": round(1 / statistics.median(denoise_ratios), 3),
            "end_to_end_speedup": round(1 / statistics.median(e2e_ratios), 3),
            # CPU time of this process (one torch thread): less disturbed by other work on a shared machine
            "end_to_end_cpu_seconds": _median([r["end_to_end_cpu"] for r in runs[name]]),
            "step_cpu_seconds": _median([r["step_cpu"] for r in runs[name]]),
            "end_to_end_cpu_ratio": _median(cpu_ratios),
            "step_cpu_ratio": _median(step_ratios),
            "rounds": [{k: round(v, 3) for k, v in r.items()} for r in runs[name]],
        }
    return {"model": model, "size": size, "steps": steps, "repeats": repeats, "prompt": PROMPT, "seed": seed,
            "levers": rows}


def measure_quality(levers: list[str], *, seeds: int) -> dict:
    from hayai.demo import BUILTIN_MODEL
    from hayai.demo.adherence import evaluate
    from hayai.speed.quality import psnr, ssim

    images: dict[str, dict] = {}
    rows = {}
    for name in ["exact"] + [lever for lever in levers if lever != "exact"]:
        if "tiny_vae" in name:  # no tiny autoencoder exists for the demo model's latent space
            rows[name] = {"not_measured": "no AutoencoderTiny was trained for the demo model's VAE"}
            continue
        kept = images.setdefault(name, {})
        report = evaluate(str(BUILTIN_MODEL), steps=None, cfg_scale=None, sampler=None, seeds=seeds,
                          request_fields=parse_lever(name),
                          on_image=lambda prompt, seed, image, kept=kept: kept.__setitem__((prompt, seed), image))
        accuracy = {k: round(v, 4) for k, v in report.accuracy.items()}
        row = {"adherence_points": round(100 * statistics.mean(report.accuracy.values()), 2), "accuracy": accuracy,
               "images": report.images, "seconds": round(report.seconds, 2),
               "settings": {"steps": report.steps, "cfg_scale": report.cfg_scale, "sampler": report.sampler,
                            "schedule_type": report.schedule_type}}
        if name != "exact":
            pairs = [(images["exact"][key], image) for key, image in kept.items()]
            psnrs = [psnr(a, b) for a, b in pairs]
            finite = [p for p in psnrs if math.isfinite(p)]
            row["psnr_db"] = round(statistics.mean(finite), 2) if finite else math.inf
            row["identical_images"] = len(psnrs) - len(finite)
            row["ssim"] = round(statistics.mean(ssim(a, b) for a, b in pairs), 4)
            row["adherence_change_points"] = round(row["adherence_points"] - rows["exact"]["adherence_points"], 2)
            row["seconds_ratio"] = round(row["seconds"] / rows["exact"]["seconds"], 3)
        rows[name] = row
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
    levers = args.levers.split(",")
    if "exact" not in levers:
        levers.insert(0, "exact")
    for lever in levers:
        parse_lever(lever)
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
