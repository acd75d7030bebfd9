"""Calibrate hayai's activation-memory model: measured peak RSS of real forwards vs the analytic model.

For each architecture, with random weights in float32 on the CPU, it measures the peak resident memory
of one denoiser forward and one VAE decode above the baseline after the weights are loaded (Linux:
"5" to /proc/self/clear_refs resets VmHWM, then VmHWM - VmRSS). glibc is told to mmap every block
above 64 KiB and never to keep freed memory (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, set by
re-executing this script), so RSS follows the live tensors.

What runs (the memory budget is ~10 GB; the SDXL UNet alone is 10 GB in fp32):
- sd15: the real UNet and VAE, at 256/320/384 px, batch 2, SDPA and math attention;
- sdxl: the real UNet at reduced transformer depth (1/1/1 layers per block instead of 1/2/10: peak
  activations depend on widths and sizes, not on how many blocks run one after another), same sizes;
- sd35m: the real MMDiT at reduced depth (2 layers, the first with dual attention), 256/384/512 px;
- one tiled VAE decode (tiles of 256 px) at 384 px.
It fits the factors (least squares through the origin), prints JSON and writes
benchmarks/results/activation_calibration_cpu.json. With the factors already in hayai.memory.costs,
"predicted" is what the library predicts as shipped.

Usage: python benchmarks/calibrate_activations.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"}
if any(os.environ.get(k) != v for k, v in _ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_ENV})

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from hayai.memory import costs  # noqa: E402
from hayai.memory.facts import facts_for_architecture  # noqa: E402
from hayai.models.architectures import build_component  # noqa: E402

from proc_memory import status_kib  # noqa: E402 (a sibling module: run as python benchmarks/...)

RESULTS = Path(__file__).parent / "results" / "activation_calibration_cpu.json"
MIB = 2**20


def measure(run) -> int:
    """Peak resident bytes that `run()` adds above the current resident set."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = status_kib("VmRSS")
    with torch.no_grad():
        out = run()
    peak = status_kib("VmHWM")
    del out
    return (peak - base) * 1024


def _model(arch: str, component: str, overrides: dict):
    return build_component(arch, component, device="cpu", dtype=torch.float32, seed=0, config_overrides=overrides)


def _facts(point: dict):
    """The facts of the model a point measured: the architecture with the point's config overrides."""
    facts = facts_for_architecture(point["arch"])
    return replace(facts, denoiser_config=json.loads(json.dumps({**facts.denoiser_config, **point["overrides"]})))


def _denoiser_run(model, facts, size: int, batch: int, attention: str):
    h = w = size // facts.vae_scale_factor
    inputs = costs._denoiser_inputs(facts.denoiser_class, facts.denoiser_config, h, w, batch, costs._text_tokens(facts))
    inputs = {k: (torch.randn(v.shape) if isinstance(v, torch.Tensor) else {a: torch.randn(b.shape) for a, b in v.items()})
              for k, v in inputs.items()}
    inputs["timestep"] = torch.full((batch,), 500.0)
    backend = SDPBackend.MATH if attention == "math" else SDPBackend.FLASH_ATTENTION

    def run():
        with sdpa_kernel(backend):
            return model(**inputs, return_dict=False)[0]

    return run


def _conv_copy_bytes(model) -> int:
    """On the CPU, oneDNN copies a conv's weight into its blocked layout on every call: the largest conv weight
    is resident on top of that conv's activations (measured: a 2560->1280 3x3 conv adds 113 MiB = its weight).
    GPUs use a cuDNN workspace instead, which the planner's safety margin covers."""
    convs = [m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return max(convs, default=0)


def predict(point: dict) -> dict:
    """Fill in what hayai.memory.costs predicts for a measured point (as the library ships now)."""
    facts, size, batch, attention = _facts(point), point["size"], point["batch"], point["attention"]
    h = size // facts.vae_scale_factor
    if point["kind"] == "denoiser":
        predicted = costs.denoiser_activation_bytes(facts, size, size, batch, "float32", attention)
        elements = costs._unet_elements if facts.denoiser_class == "UNet2DConditionModel" else costs._mmdit_elements
        raw = elements(facts.denoiser_config, h, h, costs._text_tokens(facts), attention == "math")
    else:
        tile = point["tile"]
        predicted = costs.vae_decode_activation_bytes(facts, size, size, batch, "float32", tiled=tile is not None, tile_size=tile)
        th, tw = max(costs.vae_tiles(facts, size, size, tile) if tile else [(h, h)], key=lambda t: t[0] * t[1])
        raw = costs._decoder_elements(facts.vae_config, th, tw, False)
    on_cpu = max(predicted, point["cpu_conv_copy_mib"] * MIB)  # the larger of the activations and the conv copy
    return {**point, "predicted_mib": round(predicted / MIB, 1), "error": round(on_cpu / (point["measured_mib"] * MIB) - 1, 3),
            "analytic_elements": raw}


def _record(point: dict, measured: int, model) -> dict:
    point = predict({**point, "measured_mib": round(measured / MIB, 1), "cpu_conv_copy_mib": round(_conv_copy_bytes(model) / MIB, 1)})
    print(json.dumps({k: v for k, v in point.items() if k != "analytic_elements"}), flush=True)
    return point


def calibrate_denoiser(arch: str, sizes, batch: int, overrides: dict) -> list[dict]:
    base = {"kind": "denoiser", "arch": arch, "overrides": overrides, "batch": batch, "tile": None}
    facts = _facts(base)
    model = _model(arch, "unet" if facts.denoiser_class == "UNet2DConditionModel" else "transformer", overrides)
    _denoiser_run(model, facts, sizes[0] // 2, 1, "sdpa")()  # warm-up: oneDNN primitives, lazy inits
    points = []
    for attention in ("sdpa", "math"):
        for size in sizes:
            measured = measure(_denoiser_run(model, facts, size, batch, attention))
            points.append(_record({**base, "size": size, "attention": attention}, measured, model))
    return points


def calibrate_vae(arch: str, sizes, batch: int, tiled_size: int | None) -> list[dict]:
    facts = facts_for_architecture(arch)
    vae = _model(arch, "vae", {})
    vae.decode(torch.randn(1, facts.latent_channels, 8, 8))  # warm-up
    points = []
    for size, tile in [(size, None) for size in sizes] + ([(tiled_size, 256)] if tiled_size else []):
        h = size // facts.vae_scale_factor
        z = torch.randn(batch, facts.latent_channels, h, h)
        if tile:
            vae.enable_tiling()
            vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // facts.vae_scale_factor
        measured = measure(lambda: vae.decode(z).sample)
        vae.disable_tiling()
        kind = "vae_decode_tiled" if tile else "vae_decode"
        base = {"kind": kind, "arch": arch, "overrides": {}, "size": size, "batch": batch, "attention": "sdpa", "tile": tile}
        points.append(_record(base, measured, vae))
    return points


def fit(points: list[dict]) -> dict:
    """Least-squares factors through the origin: linear term from SDPA points, then the N^2 term from math."""
    factors = {}
    groups = {"UNET_FACTOR": ("denoiser", ("sd15", "sdxl")), "MMDIT_FACTOR": ("denoiser", ("sd35m",)),
              "VAE_FACTOR": ("vae_decode", ("sd15",))}
    for name, (kind, archs) in groups.items():
        sel = [p for p in points if p["kind"] == kind and p["arch"] in archs and p["attention"] == "sdpa"]
        if sel:
            lin = [max(l for l, _ in p["analytic_elements"]) * p["batch"] * 4 for p in sel]
            meas = [p["measured_mib"] * MIB for p in sel]
            factors[name] = round(sum(m * x for m, x in zip(meas, lin)) / sum(x * x for x in lin), 3)
    num = den = 0.0
    for p in points:
        if p["attention"] != "math":
            continue
        factor = factors.get("MMDIT_FACTOR" if p["arch"] == "sd35m" else "UNET_FACTOR", 1.0)
        lin, scores = max(p["analytic_elements"], key=lambda c: c[1])
        num += (p["measured_mib"] * MIB / (p["batch"] * 4) - factor * lin) * scores
        den += scores * scores
    if den:
        factors["SCORES_FACTOR"] = round(num / den, 3)
    return factors


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def report(points: list[dict], seconds: float) -> dict:
    errors = [abs(p["error"]) for p in points]
    return {
        "machine": f"{os.cpu_count()}-core {_cpu_name()} CPU (shared with other jobs), torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, float32",
        "method": "peak VmHWM - VmRSS around one forward (clear_refs 5), glibc mmap threshold 64 KiB, no trim; "
                  "sdxl UNet at 1/1/1 transformer layers and sd35m MMDiT at 2 layers, full width; the prediction on "
                  "this CPU is max(activations, oneDNN's copy of the largest conv weight)",
        "fitted_factors": fit(points),
        "shipped_factors": {k: getattr(costs, k) for k in ("UNET_FACTOR", "MMDIT_FACTOR", "VAE_FACTOR", "SCORES_FACTOR")},
        "max_abs_error": max(errors),
        "mean_abs_error": round(sum(errors) / len(errors), 3),
        "points": points,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sd15 UNet and VAE only, two sizes")
    parser.add_argument("--repredict", action="store_true",
                        help=f"re-predict the points stored in {RESULTS.name} with the current factors (no measuring)")
    args = parser.parse_args()
    if args.repredict:
        stored = json.loads(RESULTS.read_text())
        points, seconds = [predict(p) for p in stored["points"]], stored["seconds"]
    else:
        torch.manual_seed(0)
        started = time.time()
        sizes = (256, 384) if args.quick else (256, 320, 384)
        # batch 8: at batch 2 the CPU-only copy of the largest conv weight (_conv_copy_bytes) hides the activations
        points = calibrate_denoiser("sd15", sizes, 8, {})
        points += calibrate_vae("sd15", sizes, 1, None if args.quick else 384)
        if not args.quick:
            points += calibrate_denoiser("sdxl", sizes, 8, {"transformer_layers_per_block": [1, 1, 1]})
            points += calibrate_denoiser("sd35m", (256, 384, 512), 2, {"num_layers": 2, "dual_attention_layers": [0]})
        seconds = round(time.time() - started, 1)
    result = report(points, seconds)
    print(json.dumps({k: v for k, v in result.items() if k != "points"}, indent=1))
    for p in points:
        print(f"{p['kind']:17} {p['arch']:6} {p['size']:4} px b{p['batch']} {p['attention']:4}  measured {p['measured_mib']:7.1f} MiB"
              f"  predicted {p['predicted_mib']:7.1f} MiB  (cpu conv copy {p['cpu_conv_copy_mib']:.0f})  error {p['error']:+.1%}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
