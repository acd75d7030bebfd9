"""hayai against plain diffusers, side by side: the same work, timed back to back on one machine.

    python benchmarks/harness.py --scenario cpu-tiny            # CI-sized, ~1 minute on 2 CPU cores
    python benchmarks/harness.py --scenario cpu                 # both CPU scenarios (cpu-sd15: minutes)
    python benchmarks/harness.py --scenario cuda                # SD1.5 @512, SDXL @1024, SD3.5m @1024, 20 steps

For each scenario (benchmarks/scenarios.py) each side first runs cold in a fresh process of its own
(imports, then load and the first image: load time, end-to-end time and peak memory, with torch's
first-use costs paid alike); then both sides load in this process, make one untimed image, and make it
`repeats` more times, alternating which side goes first, so drift on a shared machine hits both alike:
- hayai: `Engine(device=...).generate(request, save=False)`: hayai's plan (strategy chosen by the
  planner), its prompt encoding, hooks, history logging; `arch:` models built on the meta device and
  materialised where the plan puts them;
- diffusers: what a plain user writes: `from_pretrained(folder, torch_dtype=...)` (for `arch:` models,
  the same architecture and random weights built on the CPU), `.to(device)`, `pipe(prompt, ...)`.
Same model, resolution, steps, CFG scale, scheduler (Euler), prompt and seed (one CPU generator).

Reported per side: load seconds, the first image, end to end (load + first image), peak memory above the
process's baseline after the imports (CUDA allocator on a GPU, resident memory on a CPU; weights included),
the median warm call and the median time per denoising step (between the first and the last step
callbacks), and, for hayai, the strategy its planner chose and the phase timings. Ratios are hayai /
diffusers; the warm ones are medians of back-to-back pairs. Also whether the two images are identical.
Target (issue 6): hayai's warm call no slower than 1.03x the plain call.

Prints JSON; merges it into benchmarks/results/<machine>.json (--out FILE to choose, --no-write to skip).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenarios import GROUPS, SCENARIOS, Scenario  # noqa: E402

TARGET_RATIO = 1.03
RESULTS = Path(__file__).resolve().parent / "results"


# -- memory ------------------------------------------------------------------------------------------
def _status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


class Memory:
    """Peak memory above a baseline: CUDA allocated bytes, or the process's resident set (Linux)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def now(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated()
        return _status("VmRSS")

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated()
        return _status("VmHWM")

    @property
    def kind(self) -> str:
        return "cuda_allocated" if self.cuda else "process_rss"


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# -- the two sides -----------------------------------------------------------------------------------
class Side:
    """load() once, then run() -> (seconds, seconds per step, PIL image)."""

    name = ""

    def __init__(self, scenario: Scenario, model_ref: str):
        self.scenario, self.model_ref = scenario, model_ref
        self.strategy = ""

    def _per_step(self, stamps: list[float]) -> float:
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")


class HayaiSide(Side):
    name = "hayai"

    def load(self) -> None:
        from hayai.generation.engine import Engine
        from hayai.generation.request import GenerationRequest

        s = self.scenario
        self.engine = Engine(device=s.device)
        self.request = GenerationRequest(s.prompt, model=self.model_ref, steps=s.steps, cfg_scale=s.cfg_scale,
                                         sampler="Euler", width=s.size, height=s.size, seed=s.seed)
        self.engine.load(self.model_ref)  # an arch: model is materialised by the first run, where the plan puts it

    def run(self):
        stamps: list[float] = []
        device = self.scenario.device

        def on_event(event):
            if event.phase == "denoise":
                stamps.append(time.perf_counter())  # the engine's step callback syncs CUDA first (PhaseTimer)

        _sync(device)
        start = time.perf_counter()
        result = self.engine.generate(self.request, save=False, progress=on_event)
        _sync(device)
        seconds = time.perf_counter() - start
        self.strategy = result.strategy
        self.first_timings = getattr(self, "first_timings", None) or result.timings
        self.last_timings = result.timings
        return seconds, self._per_step(stamps), result.images[0].image


class DiffusersSide(Side):
    name = "diffusers"

    def load(self) -> None:
        import diffusers
        import torch

        s = self.scenario
        # the dtype hayai loads in on this device (bf16 where the card has it), so both sides run the same math
        from hayai.generation.engine import Engine

        dtype = getattr(torch, Engine(device=s.device).load_dtype)
        if self.model_ref.startswith("arch:"):
            from hayai.models.architectures import build_architecture

            pipe = build_architecture(self.model_ref[5:], device="cpu", dtype=dtype, seed=0)  # what from_pretrained gives
        else:
            pipe = diffusers.DiffusionPipeline.from_pretrained(self.model_ref, torch_dtype=dtype)
        pipe.to(s.device)
        if "Flow" not in type(pipe.scheduler).__name__:
            pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.strategy = f"plain .to({s.device}) {str(dtype).removeprefix('torch.')}"

    def run(self):
        import torch

        s = self.scenario
        stamps: list[float] = []
        device = s.device

        def on_step_end(pipe, step, timestep, tensors):
            _sync(device)
            stamps.append(time.perf_counter())
            return {}

        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            image = self.pipe(s.prompt, negative_prompt="", num_inference_steps=s.steps, guidance_scale=s.cfg_scale,
                              width=s.size, height=s.size, generator=torch.Generator("cpu").manual_seed(s.seed),
                              callback_on_step_end=on_step_end).images[0]
        _sync(device)
        return time.perf_counter() - start, self._per_step(stamps), image


# -- one scenario ------------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return round(statistics.median(values), 5)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def _import_everything() -> None:
    """Import both sides' modules before any baseline, so neither side's memory counts the libraries."""
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    import hayai.generation.engine  # noqa: F401
    import hayai.memory.planner  # noqa: F401
    import hayai.models.architectures  # noqa: F401

    for name in ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline"):
        getattr(diffusers, name)


SIDES = {"hayai": HayaiSide, "diffusers": DiffusersSide}


def cold(side_name: str, scenario: Scenario, model_ref: str) -> dict:
    """Load and make the first image in this (fresh) process: load, first image and peak memory above the
    baseline after the imports, so each side pays torch's first-use costs alike."""
    _import_everything()
    memory = Memory(scenario.device)
    gc.collect()
    baseline = memory.now()
    memory.reset_peak()
    side = SIDES[side_name](scenario, model_ref)
    start = time.perf_counter()
    side.load()
    _sync(scenario.device)
    load_s = time.perf_counter() - start
    seconds, _, _ = side.run()
    entry = {"load_s": round(load_s, 4), "first_image_s": round(seconds, 4), "end_to_end_s": round(load_s + seconds, 4),
             "peak_memory_bytes": memory.peak() - baseline, "peak_memory_kind": memory.kind}
    if scenario.device == "cuda":
        entry["host_peak_rss_bytes"] = _status("VmHWM")
    if side_name == "hayai":
        entry["phase_timings_first_run"] = side.first_timings
    return entry


def _cold_in_subprocess(side_name: str, scenario: Scenario, model_ref: str, threads: int) -> dict:
    command = [sys.executable, __file__, "--cold", side_name, "--scenario", scenario.name, "--model-ref", model_ref,
               "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        raise RuntimeError(f"the cold {side_name} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_scenario(scenario: Scenario, model_ref: str, threads: int) -> dict:
    import numpy as np

    report = {name: _cold_in_subprocess(name, scenario, model_ref, threads) for name in SIDES}
    for name in SIDES:
        report[name].update(runs_s=[], per_step_runs_s=[])
    _import_everything()
    sides = [HayaiSide(scenario, model_ref), DiffusersSide(scenario, model_ref)]
    first_images = {}
    for side in sides:  # warm-up: the first call of each side is not timed here (the cold runs above are)
        side.load()
        first_images[side.name] = side.run()[2]
    for repeat in range(scenario.repeats):  # warm, alternating who goes first; each pair runs back to back
        for side in (sides if repeat % 2 == 0 else sides[::-1]):
            seconds, per_step, _ = side.run()
            report[side.name]["runs_s"].append(seconds)
            report[side.name]["per_step_runs_s"].append(per_step)
    h, d = report["hayai"], report["diffusers"]
    # ratios of back-to-back pairs, then their median: drift on a shared machine cancels within a pair
    paired = {key: _median([a / b for a, b in zip(h[runs], d[runs])])
              for key, runs in (("generate", "runs_s"), ("per_step", "per_step_runs_s"))}
    for side in sides:
        entry = report[side.name]
        entry["generate_s"] = _median(entry["runs_s"])
        entry["per_step_s"] = _median(entry["per_step_runs_s"])
        entry["runs_s"] = [round(v, 5) for v in entry["runs_s"]]
        entry["per_step_runs_s"] = [round(v, 5) for v in entry["per_step_runs_s"]]
        entry["strategy"] = side.strategy
    h["phase_timings_last_run"] = sides[0].last_timings
    ours, theirs = (np.asarray(first_images[n].convert("RGB"), dtype=np.int16) for n in ("hayai", "diffusers"))
    ratio = {**paired, "end_to_end": _ratio(h["end_to_end_s"], d["end_to_end_s"]),
             "first_image": _ratio(h["first_image_s"], d["first_image_s"]),
             "peak_memory": _ratio(h["peak_memory_bytes"], d["peak_memory_bytes"])}
    return {
        "scenario": scenario.to_dict(),
        **report,
        "ratio": ratio,
        "target": f"median paired ratio of warm calls (hayai / diffusers) <= {TARGET_RATIO}",
        "meets_target": ratio["generate"] is not None and ratio["generate"] <= TARGET_RATIO,
        "images_identical": bool(np.array_equal(ours, theirs)),
        "max_pixel_difference": int(np.abs(ours - theirs).max()),
    }


# -- the machine -------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str, threads: int) -> tuple[str, str]:
    """(file stem, description) of this machine."""
    import torch

    cores = os.cpu_count()
    if device == "cuda":
        gpu = torch.cuda.get_device_name(0)
        stem = "cuda-" + re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
        return stem, f"{gpu}, {cores}-core {_cpu_model()}, torch {torch.__version__}"
    stem = f"cpu-{cores}core-" + re.sub(r"[^a-z0-9]+", "-", _cpu_model().lower()).strip("-")[:40].strip("-")
    return stem, f"{cores}-core {_cpu_model()}, torch {torch.__version__}, {threads} torch thread(s)"


def publish(output: dict, name: str, write: bool) -> dict:
    """Print a benchmark's result as JSON; with `write`, also keep it as results/NAME.json."""
    print(json.dumps(output, indent=2))
    if write:
        path = RESULTS / f"{name}.json"
        path.write_text(json.dumps(output, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return output


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", choices=sorted(SIDES), help=argparse.SUPPRESS)  # internal: one side's cold run
    parser.add_argument("--model-ref", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", action="append", required=True,
                        help=f"a scenario ({', '.join(SCENARIOS)}) or group ({', '.join(GROUPS)}); repeat for several")
    parser.add_argument("--repeats", type=int, help="warm runs per side (default: the scenario's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, the same for both sides [1]")
    parser.add_argument("--machine", help="results file stem [derived from the CPU/GPU]")
    parser.add_argument("--note", default="", help="recorded with the machine, e.g. 'shared with a training job'")
    parser.add_argument("--out", type=Path, help="results file [benchmarks/results/<machine>.json]")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    names = [n for item in args.scenario for part in item.split(",") for n in GROUPS.get(part, [part])]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join([*SCENARIOS, *GROUPS])}")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import torch

    torch.set_num_threads(args.threads)
    if args.cold:
        print(json.dumps(cold(args.cold, SCENARIOS[names[0]], args.model_ref)))
        return {}
    devices = {SCENARIOS[n].device for n in names}
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("a CUDA scenario needs a CUDA device; none is available here")
    if len(devices) > 1:
        parser.error("run CPU and CUDA scenarios separately (their results go to different machine files)")
    device = devices.pop()
    stem, description = describe_machine(device, args.threads)
    results = {}
    with tempfile.TemporaryDirectory(prefix="hayai-bench-") as scratch:
        os.environ["HAYAI_HOME"] = str(Path(scratch) / "home")  # hayai's history and caches stay out of the user's
        for name in names:
            scenario = SCENARIOS[name]
            if args.repeats is not None:
                from dataclasses import replace

                scenario = replace(scenario, repeats=args.repeats)
            model_ref = scenario.model
            if model_ref == "tiny":
                from hayai.models.families import Family
                from hayai.models.tiny import save_tiny_pipeline

                model_ref = str(save_tiny_pipeline(Family.SD1, Path(scratch) / "tiny-sd1"))
            print(f"running {name} ...", file=sys.stderr)
            results[name] = run_scenario(scenario, model_ref, args.threads)
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    import diffusers

    output = {"machine": description + (f"; {args.note}" if args.note else ""), "torch": torch.__version__,
              "diffusers": diffusers.__version__, "threads": args.threads,
              "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "scenarios": results}
    print(json.dumps(output, indent=2))
    if not args.no_write:
        path = args.out or RESULTS / f"{args.machine or stem}.json"
        merged = json.loads(path.read_text()) if path.is_file() else {"scenarios": {}}
        merged.update({k: v for k, v in output.items() if k != "scenarios"})
        merged["scenarios"] = {**merged.get("scenarios", {}), **results}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return output


if __name__ == "__main__":
    main()
