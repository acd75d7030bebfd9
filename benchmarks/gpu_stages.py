"""The stages of benchmarks/gpu_check.py, and what they measure with.

Each stage is a function of a `StageContext`; it writes one JSON line per result with `ctx.emit(...)` as
it goes, and checks `ctx.has_time(...)` before each sub-step, so a slow stage skips what it cannot finish
instead of running into the hard deadline (gpu_check.py kills it there). On CUDA, memory is the
allocator's (allocated bytes; `harness.Memory`); in a dry run on the CPU the same code reads the process's
resident set, and the models are the tiny pipelines: the figures mean nothing, the code paths are the
real ones.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gpu_measure import (PROMPT, Memory, PeakPoller, base_strategy, generate, injected_oom, phase_errors, prediction,
                         sync, teardown, without_result)

REPO = Path(__file__).resolve().parents[1]
# the architectures and their native sizes; in a dry run a tiny pipeline of the same family stands in
ARCHS = {"sd15": 512, "sdxl": 1024, "sd35m": 1024}
ARCH_FAMILY = {"sd15": "sd1", "sdxl": "sdxl", "sd35m": "sd3"}
TINY_SIZE = 128  # so half of it is still the smallest size a request takes (64)
SCALES = (0.5, 1.0, 1.5)  # the sizes stage 3 times, as fractions of the native size
SIZE_STEP = 16  # sizes are multiples of this: the VAE's 8 x SD3's patch of 2
GIB = 1024**3


@dataclass
class StageContext:
    name: str
    dry: bool  # tiny models on the CPU, short runs
    cuda: bool
    deadline_at: float  # time.monotonic() when the stage is killed
    jsonl: Path
    scratch: Path  # a temporary folder shared by the stages (models, datasets)
    tiny: dict = field(default_factory=dict)  # family value -> folder of its tiny pipeline (dry runs)

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def emit(self, **fields) -> dict:
        """Append one result line to the JSONL file now (flushed), so a stage killed later keeps it."""
        record = {"stage": self.name, **fields}
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
        print(f"[{self.name}] {_short(record)}", file=sys.stderr, flush=True)
        return record

    def remaining(self) -> float:
        return self.deadline_at - time.monotonic()

    def has_time(self, seconds: float, item: str) -> bool:
        """Whether `seconds` (a sub-step's expected length) are left; if not, records `item` as skipped."""
        if self.remaining() >= seconds:
            return True
        self.emit(item=item, status="skipped (deadline)", needed_s=seconds, left_s=round(self.remaining(), 1))
        return False

    @contextlib.contextmanager
    def guarded(self, item: str):
        """Record an item that fails, with its error, and go on with the next one (one broken placement must
        not cost the others their one run on a lent GPU)."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 - a result of the check, recorded
            self.emit(item=item, status="error", error=f"{type(error).__name__}: {error}"[:2000],
                      traceback=traceback.format_exc()[-3000:])

    def model(self, arch: str) -> tuple[str, int]:
        """(model reference, native size) of `arch`: the real architecture, or in a dry run its tiny stand-in."""
        if self.dry:
            return str(self.tiny[ARCH_FAMILY[arch]]), TINY_SIZE
        return f"arch:{arch}", ARCHS[arch]

    def seconds(self, real: float, dry: float = 2.0) -> float:
        return dry if self.dry else real


def _short(record: dict) -> str:
    text = json.dumps({k: v for k, v in record.items() if k != "stage"}, default=str)
    return text if len(text) < 300 else text[:297] + "..."


def sizes(native: int) -> list[int]:
    return [round(native * scale / SIZE_STEP) * SIZE_STEP for scale in SCALES]


# -- 1. machine facts ----------------------------------------------------------------------------------
_PACKAGES = ("diffusers", "transformers", "accelerate", "safetensors", "tokenizers", "huggingface_hub", "peft", "numpy",
             "scipy", "PIL", "yaml", "typer", "rich", "matplotlib", "pytest")


def machine_facts(ctx: StageContext) -> None:
    import torch

    from hayai.hardware import probe

    packages = {}
    for name in _PACKAGES:
        try:
            module = importlib.import_module(name)
            packages[name] = {"version": getattr(module, "__version__", "?"), "from": str(Path(module.__file__).parent.parent)}
        except ImportError as error:
            packages[name] = {"version": None, "error": str(error)}
    record = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
              "cudnn": torch.backends.cudnn.version() if ctx.cuda else None, "cuda_available": ctx.cuda,
              "cpu_count": os.cpu_count(), "packages": packages}
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        record["device"] = {"name": props.name, "total_bytes": props.total_memory, "capability": [props.major, props.minor],
                            "multiprocessors": props.multi_processor_count}
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,pcie.link.gen.max,"
                              "pcie.link.width.max,clocks.max.sm", "--format=csv"], capture_output=True, text=True, timeout=20)
        record["nvidia_smi"] = smi.stdout.strip().splitlines()
    record["hardware_probe"] = probe().to_dict()  # what hayai's planner sees
    ctx.emit(item="machine", **record)


# -- 2. link speeds, SDPA backends, launch overhead ------------------------------------------------------
def _best_seconds(run, cuda: bool, repeats: int = 5) -> float:
    run()
    sync(cuda)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync(cuda)
        best = min(best, time.perf_counter() - start)
    return best


def link_and_kernels(ctx: StageContext) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from hayai.hardware import probe

    nbytes = (16 if ctx.dry else 1024) * 2**20
    host = torch.ones(nbytes, dtype=torch.uint8)
    if ctx.cuda:
        pinned = torch.ones(nbytes, dtype=torch.uint8, pin_memory=True)
        device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        copies = {"h2d_pageable": lambda: device.copy_(host), "h2d_pinned": lambda: device.copy_(pinned, non_blocking=True),
                  "d2h_pageable": lambda: host.copy_(device), "d2h_pinned": lambda: pinned.copy_(device, non_blocking=True)}
    else:  # stand-in: a host-to-host copy, through the same timing
        other = torch.empty_like(host)
        copies = {"host_copy": lambda: other.copy_(host)}
    gbps = {name: round(nbytes / _best_seconds(run, ctx.cuda) / 1e9, 2) for name, run in copies.items()}
    ctx.emit(item="copies", bytes=nbytes, gbps=gbps, planner_link_gbps=probe().best.link_gbps)

    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    q = torch.randn(2, 8, 256 if ctx.dry else 4096, 64, device=ctx.device, dtype=dtype)
    backends = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
        try:
            with sdpa_kernel([backend]):
                seconds = _best_seconds(lambda: F.scaled_dot_product_attention(q, q, q), ctx.cuda, repeats=3)
            backends[backend.name] = {"available": True, "ms": round(seconds * 1000, 3)}
        except RuntimeError as error:
            backends[backend.name] = {"available": False, "error": str(error).strip().splitlines()[0][:200]}
    ctx.emit(item="sdpa", shape=list(q.shape), dtype=str(dtype), backends=backends)

    x = torch.zeros(1, device=ctx.device)
    launches = 2000
    launch = _best_seconds(lambda: [x.add_(1) for _ in range(launches)], ctx.cuda, repeats=3) / launches
    side = 512 if ctx.dry else 8192
    a = torch.randn(side, side, device=ctx.device, dtype=dtype)
    matmul = _best_seconds(lambda: a @ a, ctx.cuda, repeats=10)
    ctx.emit(item="compute", launch_seconds=launch, matmul_side=side, matmul_dtype=str(dtype),
             matmul_tflops=round(2 * side**3 / matmul / 1e12, 2), planner_tflops=probe().best.tflops)


# -- 3. resident runs: peaks per phase against the planner, speed at three sizes --------------------------
def resident(ctx: StageContext) -> None:
    memory = Memory(ctx.device)
    for arch in ARCHS:
        ref, native = ctx.model(arch)
        if not ctx.has_time(ctx.seconds({"sd15": 15, "sdxl": 30, "sd35m": 40}[arch]), f"{arch}@{native}"):
            continue
        baseline = memory.now()
        with ctx.guarded(f"{arch}@{native}"):
            _resident_runs(ctx, arch, ref, native, memory)
        ctx.emit(item=f"{arch} teardown", left_bytes=teardown(memory, baseline))


def _resident_runs(ctx: StageContext, arch: str, ref: str, native: int, memory: Memory) -> None:
    """One engine (dropped on return): a cold run (placement peak), a hooked one (phase peaks), other sizes."""
    from hayai.generation.engine import Engine

    steps = 2 if ctx.dry else 6
    engine = Engine(device=ctx.device)
    strategy = base_strategy(engine)
    cold = generate(engine, ref, native, steps, strategy, memory, placement=True)
    warm = generate(engine, ref, native, steps, strategy, memory, phases=True)
    predicted = prediction(engine, ref, warm)
    ctx.emit(item=f"{arch}@{native}", arch=arch, model=ref, memory=memory.kind,
             cold={k: v for k, v in without_result(cold).items() if k != "size"}, phase_peak_bytes=warm["phase_peak_bytes"],
             phase_error=phase_errors(warm["phase_peak_bytes"], predicted["predicted_phase_bytes"]),
             **{k: v for k, v in predicted.items() if k.startswith("predicted")})
    for size in sizes(native):
        if not ctx.has_time(ctx.seconds(8 if size <= native else 15, 1.0), f"{arch}@{size} timing"):
            break
        run = warm if size == native else generate(engine, ref, size, steps, strategy, memory)
        point = prediction(engine, ref, run)
        ctx.emit(item=f"{arch}@{size} timing", arch=arch, fit_point=True, size=size, steps=steps, strategy=run["strategy"],
                 s_per_step=run["s_per_step"], it_per_s=round(1 / run["s_per_step"], 3) if run["s_per_step"] else None,
                 **{k: point[k] for k in ("predicted_s_per_step", "flops_per_step", "kind", "device_tflops", "device_class")})


# -- 4. every offload placement --------------------------------------------------------------------------
OFFLOAD_ARCH = "sdxl"


def placements(spec) -> list[str]:
    """The strategies stage 4 runs: on an accelerator each plain placement other than resident (lossless
    first, then fp8 storage); on a CPU (dry run) the variants past the plain one."""
    from hayai.memory.strategies import candidates

    options = candidates(spec)
    if not spec.accelerator:
        return [s.name for s in options[1:]]
    plain = [s for s in options if s.placement not in ("resident", "cpu") and not s.vae_tiling and not s.split_batch]
    return [s.name for s in sorted(plain, key=lambda s: s.fp8_storage)]


def offload(ctx: StageContext) -> None:
    from hayai.generation.engine import Engine

    memory, host = Memory(ctx.device), Memory("cpu")
    ref, native = ctx.model(OFFLOAD_ARCH)
    for name in placements(Engine(device=ctx.device).device_spec):
        item = f"{OFFLOAD_ARCH}@{native} {name}"
        if not ctx.has_time(ctx.seconds(15), item):
            continue
        baseline = memory.now()
        record = None
        with ctx.guarded(item):
            record = _placement_runs(ctx, item, ref, native, name, memory, host)
        if record is not None:
            ctx.emit(**record, left_bytes=teardown(memory, baseline))


def _placement_runs(ctx: StageContext, item: str, ref: str, native: int, name: str, memory: Memory, host: Memory) -> dict:
    """A fresh engine under strategy `name` (dropped on return): a cold run for the placement and host peaks, a
    hooked one for the phase peaks and s/step."""
    from hayai.generation.engine import Engine

    engine = Engine(device=ctx.device)
    try:
        host.reset_peak()
        host_kind = "process_rss"
    except OSError:  # a kernel that refuses /proc/self/clear_refs: the peak since the stage started
        host_kind = "process_rss_lifetime"
    cold = generate(engine, ref, native, 2, name, memory, placement=True)
    host_peak = host.peak()
    warm = generate(engine, ref, native, 2 if ctx.dry else 4, name, memory, phases=True)
    predicted = prediction(engine, ref, warm)
    return dict(item=item, strategy=name, memory=memory.kind, placement_peak_bytes=cold["placement_peak_bytes"],
                peak_bytes=cold["peak_bytes"], host_peak_bytes=host_peak, host_peak_kind=host_kind, phase_peak_bytes=warm["phase_peak_bytes"],
                s_per_step=warm["s_per_step"], seconds=warm["seconds"], timings=warm["timings"],
                events=cold["events"] + warm["events"], phase_error=phase_errors(warm["phase_peak_bytes"], predicted["predicted_phase_bytes"]),
                **{k: v for k, v in predicted.items() if k.startswith("predicted")})


# -- 5. the out-of-memory ladder under a VRAM cap --------------------------------------------------------
LADDER = (("8GB", "sd35m"), ("4GB", "sdxl"))
DRY_LADDER = (("2GB", "sd15"), ("1GB", "sd35m"))


def ladder(ctx: StageContext) -> None:
    memory = Memory(ctx.device)
    for cap, arch in DRY_LADDER if ctx.dry else LADDER:
        ref, native = ctx.model(arch)
        item = f"{arch}@{native} vram {cap}"
        if not ctx.has_time(ctx.seconds(40), item):
            continue
        baseline = memory.now()
        record = None
        with ctx.guarded(item):  # a raw out-of-memory error escaping the engine is recorded there: a finding
            record = _ladder_run(ctx, item, cap, ref, native, memory)
        if record is not None:
            ctx.emit(**record, left_bytes=teardown(memory, baseline))


def _ladder_run(ctx: StageContext, item: str, cap: str, ref: str, native: int, memory: Memory) -> dict:
    """`resident` forced on an engine capped to `cap`: the step-downs it takes and where it ends."""
    from hayai.errors import HayaiError
    from hayai.generation.engine import Engine
    from hayai.hardware import parse_size

    engine = Engine(device=ctx.device, vram=parse_size(cap) if ctx.cuda else None)  # a CPU has no VRAM to cap
    forced = base_strategy(engine)
    record = {"item": item, "vram": cap, "forced": forced}
    try:
        with injected_oom() if ctx.dry else contextlib.nullcontext():
            run = generate(engine, ref, native, 2, forced, memory, placement=True)
    except HayaiError as error:  # the ladder ran out
        return {**record, "status": "failed", "error": str(error)}
    return {**record, "status": "ok", "final_strategy": run["strategy"], "events": run["events"], "peak_bytes": run["peak_bytes"],
            "placement_peak_bytes": run["placement_peak_bytes"], "seconds": run["seconds"], "s_per_step": run["s_per_step"],
            "planner_choice": prediction(engine, ref, run)["planner_choice"]}


# -- 6. LoRA training under a VRAM cap -------------------------------------------------------------------
def train(ctx: StageContext) -> None:
    from lora_training import build_data

    from hayai.store import Store
    from hayai.training import TrainConfig, train_lora

    ref, native = ctx.model("sd15")
    cap = "2GB" if ctx.dry else "8GB"
    steps = 3 if ctx.dry else 10
    data = build_data(ctx.scratch / "train-data", count=8)
    memory = Memory(ctx.device)
    poller = PeakPoller(memory)
    stamps: dict[int, float] = {}
    step_peak = [None]

    def progress(event):
        if event.phase == "cache" and poller.ident is None:
            poller.start()
        if event.phase == "train":
            sync(ctx.cuda)
            stamps[event.step] = time.perf_counter()
            if event.step == steps - 1:  # before the last step, which also writes the checkpoint and the samples
                step_peak[0] = memory.peak()

    config = TrainConfig(dataset=str(data), model=ref, output_name="gpu-check", output_dir=str(ctx.scratch / "train-run"),
                         overwrite=True, resolution=native, device=ctx.device, vram=cap if ctx.cuda else None, steps=steps, lr_scheduler="constant",
                         warmup_steps=0, validation_fraction=0.0, checkpoint_every=steps, sample_every=steps,
                         sample_steps=2 if ctx.dry else 4, sample_prompts=(PROMPT,), sample_seeds=(1,),
                         mixed_precision=None if ctx.cuda else "no")
    memory.reset_peak()
    try:
        result = train_lora(config, progress=progress, store=Store(ctx.scratch / "train.db"))
    finally:
        cache_peak = poller.stop()
    plan = result.plan
    ctx.emit(item=f"lora sd15@{native} vram {cap}", model=ref, status=result.status, steps=result.step,
             cache_peak_bytes=cache_peak, predicted_cache_peak_bytes=plan["cache_peak_bytes"], step_peak_bytes=step_peak[0],
             predicted_step_peak_bytes=plan["peak_bytes"], run_peak_bytes=result.peak_memory_bytes,
             budget_bytes=plan["budget_bytes"], samples_written=Path(result.files.get("samples", "")).is_file(),
             s_per_step=round((stamps[steps - 1] - stamps[1]) / (steps - 2), 5) if steps > 2 else None,
             plan={k: plan[k] for k in ("mixed_precision", "batch_size", "gradient_checkpointing", "optimizer", "cache_chunk", "reasons")},
             timings=result.timings)


# -- 7. the suite's GPU tests ----------------------------------------------------------------------------
def gpu_tests(ctx: StageContext) -> None:
    files = [str(p.relative_to(REPO)) for p in sorted((REPO / "tests").glob("test_*.py")) if "mark.gpu" in p.read_text()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(1.0, ctx.remaining() - 2))
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode(errors="replace") if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        ctx.emit(item="pytest -m gpu", files=files, status="timeout", tail=output[-3000:])
        return
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = next((line.strip("= ") for line in reversed(lines)
                    if re.search(r"\d+ (passed|failed|skipped|deselected|errors?)\b", line)), None)
    ctx.emit(item="pytest -m gpu", files=files, returncode=done.returncode, summary=summary,
             seconds=round(time.perf_counter() - start, 2), tail=None if done.returncode == 0 else (done.stdout + done.stderr)[-3000:])


# -- 8. regional compilation -----------------------------------------------------------------------------
def compiled(ctx: StageContext) -> None:
    from hayai.generation.engine import Engine

    memory = Memory(ctx.device)
    ref, native = ctx.model("sd15")
    steps = 2 if ctx.dry else 10
    engine = Engine(device=ctx.device)
    strategy = base_strategy(engine)
    generate(engine, ref, native, steps, strategy, memory)  # placement and first-call costs
    eager = generate(engine, ref, native, steps, strategy, memory)
    unet = engine.load(ref).pipe.unet
    # in a dry run dynamo traces the blocks but hands them to the eager backend (no C++ build on a CPU)
    unet.compile_repeated_blocks(fullgraph=True, **({"backend": "eager"} if ctx.dry else {}))
    first = generate(engine, ref, native, steps, strategy, memory)  # compiles
    again = generate(engine, ref, native, steps, strategy, memory)
    ctx.emit(item=f"sd15@{native} compile_repeated_blocks", eager_s_per_step=eager["s_per_step"],
             compiled_s_per_step=again["s_per_step"], speedup=round(eager["s_per_step"] / again["s_per_step"], 3),
             first_compiled_call_s=first["seconds"], eager_call_s=eager["seconds"], backend="eager" if ctx.dry else "inductor")


# -- 9. speed levers at real resolutions -----------------------------------------------------------------------
GPU_LEVERS = {"sd15": "exact,speed=balanced,step_cache=2,token_merging=0.5,channels_last",
              "sdxl": "exact,speed=balanced,token_merging=0.5,channels_last",
              "sd35m": "exact,block_cache=0.05,block_cache=0.1"}


def levers(ctx: StageContext) -> None:
    """`hayai bench speed`'s timing on each architecture at its native size (the code of
    benchmarks/speed_levers.py): every lever's ratio to the exact run, and the PSNR of its image to the
    exact run's (random weights: the distance says how much a lever changes the computation, not quality)."""
    from hayai.generation.engine import Engine
    from hayai.speed.bench import lever_list, measure_time
    from hayai.speed.quality import psnr

    from hayai.memory.apply import free_memory

    steps, repeats = (2, 1) if ctx.dry else (20, 2)
    for arch, names in GPU_LEVERS.items():
        if ctx.dry and arch == "sd35m":
            names = "exact"  # the tiny SD3 has 2 transformer blocks: nothing for block caching to skip
        ref, native = ctx.model(arch)
        if not ctx.has_time(ctx.seconds(40 if arch == "sd15" else 80, 10), f"{arch} levers"):
            continue
        with ctx.guarded(f"{arch} levers"):
            engine = Engine(device=ctx.device)
            timed = measure_time(engine, lever_list(names), model=ref, size=native, steps=steps, repeats=repeats)
            exact = timed.images.get("exact")
            for name, row in timed.rows.items():
                image = timed.images.get(name)
                ctx.emit(item=f"{arch}@{native} {name}", lever=name, steps=steps,
                         end_to_end_ratio=row["end_to_end_ratio"], denoise_ratio=row["denoise_ratio"],
                         end_to_end_s=row["end_to_end_seconds"], denoise_s=row["denoise_seconds"],
                         psnr_db=None if exact is None or image is None or name == "exact" else round(psnr(exact, image), 2))
            engine.unload_all()
            del engine, timed
            free_memory()


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext], None]
    deadline: float  # seconds on the GPU machine (a dry run gives every stage the same short one)
    cuda: bool = True  # needs CUDA: "skipped (no CUDA)" without it, except in a dry run
    optional: bool = False  # runs only if the run's time budget has this much left
    models: bool = True  # a dry run gives it the tiny pipelines


STAGES = (
    Stage("facts", machine_facts, 20, cuda=False, models=False),
    Stage("link", link_and_kernels, 20, models=False),
    Stage("resident", resident, 90),
    Stage("offload", offload, 90),
    Stage("ladder", ladder, 90),  # each step down rebuilds the model: sdxl at 4 GB may take ten
    Stage("train", train, 60),
    Stage("pytest", gpu_tests, 45, models=False),
    Stage("levers", levers, 120, optional=True),
    Stage("compile", compiled, 90, optional=True),
)
