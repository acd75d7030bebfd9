"""What benchmarks/gpu_stages.py measures a generation with: phase and placement peaks through forward hooks,
s/step from the engine's step callbacks, the planner's prediction for the same request, and the bytes a dropped
engine leaves behind. Memory is `harness.Memory`: the CUDA allocator's bytes on a GPU, the resident set on a CPU.
"""

from __future__ import annotations

import contextlib
import threading
import time

from harness import Memory

__all__ = ["PROMPT", "Memory", "PeakPoller", "base_strategy", "generate", "injected_oom", "phase_errors", "phase_peaks",
           "prediction", "sync", "teardown", "without_result"]
PROMPT = "a small red circle at the top left on a white background"


def sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _components(pipe) -> dict[str, list]:
    """The modules whose forward is each phase: text encoders, the denoiser, the VAE decoder."""
    encoders = [m for m in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")) if m is not None]
    return {"text_encode": encoders, "denoise": [getattr(pipe, "unet", None) or pipe.transformer], "vae_decode": [pipe.vae.decoder]}


@contextlib.contextmanager
def phase_peaks(pipe, memory: Memory, into: dict):
    """Peak memory of each phase's forwards: the mark is reset as a phase's module is entered (before any
    offload hook moves its weights in) and read as it returns; a phase keeps its highest reading."""
    handles = []
    for phase, modules in _components(pipe).items():
        for module in modules:
            handles.append(module.register_forward_pre_hook(lambda *_: memory.reset_peak()))
            handles.append(module.register_forward_hook(
                lambda *_, phase=phase: into.__setitem__(phase, max(into.get(phase, 0), memory.peak()))))
    try:
        yield into
    finally:
        for handle in handles:
            handle.remove()


def _real(module, args) -> bool:
    """Whether a forward works on real tensors: the planner's FLOP counts run the models on the meta device."""
    import torch

    tensors = [p for p in [next(module.parameters(), None)] if p is not None] + [a for a in args if isinstance(a, torch.Tensor)]
    return bool(tensors) and all(t.device.type != "meta" for t in tensors)


@contextlib.contextmanager
def first_forward_peak(memory: Memory, into: dict):
    """The peak from the run's start (the engine resets the mark) to the first real module forward: the
    model's build and placement, before any text is encoded."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    def hook(module, args):
        if _real(module, args):
            into.setdefault("placement", memory.peak())
            handle.remove()

    handle = register_module_forward_pre_hook(hook)
    try:
        yield into
    finally:
        handle.remove()


@contextlib.contextmanager
def injected_oom(classes=("UNet2DConditionModel", "SD3Transformer2DModel")):
    """Dry runs: the denoiser's first forward raises an out-of-memory error, as a card too small would."""
    import torch
    from torch.nn.modules.module import register_module_forward_pre_hook

    def hook(module, args):
        if type(module).__name__ in classes and _real(module, args):
            handle.remove()
            raise torch.OutOfMemoryError("CUDA out of memory (injected by gpu_check --dry-run)")

    handle = register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def generate(engine, ref: str, size: int, steps: int, strategy: str | None, memory: Memory, *,
             placement: bool = False, phases: bool = False) -> dict:
    """One image through `engine`: seconds per step (between the first and last step callbacks, which wait
    for the device), the run's peak, and on request the placement peak or every phase's peak."""
    from hayai.generation.options import RunOptions
    from hayai.generation.request import GenerationRequest

    stamps: list[float] = []
    peaks: dict = {}

    def progress(event):
        if event.phase == "denoise":
            stamps.append(time.perf_counter())

    request = GenerationRequest(PROMPT, model=ref, steps=steps, cfg_scale=7.0, sampler="Euler", width=size, height=size, seed=0)
    options = RunOptions(strategy=strategy, save=False, progress=progress)
    watch = first_forward_peak(memory, peaks) if placement else contextlib.nullcontext()
    hooked = phase_peaks(engine.load(ref).pipe, memory, peaks) if phases else contextlib.nullcontext()
    start = time.perf_counter()
    with watch, hooked:
        result = engine.generate(request, options)
    sync(memory.cuda)
    out = {"size": size, "steps": steps, "strategy": result.strategy, "seconds": round(time.perf_counter() - start, 4),
           "s_per_step": round((stamps[-1] - stamps[0]) / (len(stamps) - 1), 6) if len(stamps) > 1 else None,
           "timings": result.timings, "events": result.events, "result": result}
    if placement:
        out["peak_bytes"] = result.peak_memory.peak_bytes
        out["placement_peak_bytes"] = peaks.get("placement")
    if phases:
        out["phase_peak_bytes"] = {k: peaks[k] for k in ("text_encode", "denoise", "vae_decode") if k in peaks}
    return out


def prediction(engine, ref: str, run: dict) -> dict:
    """What the planner predicts for the run's request under the strategy that finished it."""
    from hayai.generation.options import RunOptions
    from hayai.memory import costs
    from hayai.memory.planner import _device_class

    result = run["result"]
    loaded = engine.load(ref)
    the_plan, _, _ = engine.plan_for(loaded, result.request, RunOptions(strategy=result.strategy))
    chosen = next(e for e in the_plan.candidates if e.strategy.name == result.strategy)
    spec = engine.device_spec
    return {"predicted_peak_bytes": chosen.peak_bytes, "predicted_phase_bytes": chosen.phase_bytes,
            "predicted_host_bytes": chosen.host_bytes,
            "predicted_s_per_step": round(chosen.phase_seconds["denoise"] / result.request.steps, 6),
            "flops_per_step": costs.denoiser_flops(loaded.facts, result.request.width, result.request.height, 2),
            "kind": costs.architecture_kind(loaded.facts), "device_tflops": spec.tflops, "device_class": _device_class(spec),
            "planner_choice": the_plan.strategy.name}


def phase_errors(measured: dict, predicted: dict) -> dict:
    """predicted / measured - 1 per phase (+0.10: the planner predicted 10% more than was used)."""
    return {k: round(predicted[k] / v - 1, 3) for k, v in measured.items() if v and k in predicted}


def without_result(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "result"}


def teardown(memory: Memory, baseline: int) -> int:
    """Bytes still allocated after the engine is gone, gc has run and the cache is emptied."""
    from hayai.memory.apply import free_memory

    free_memory()
    return memory.now() - baseline


def base_strategy(engine) -> str:
    """The plain resident strategy here ("resident" on a GPU, "cpu-float32" on a CPU)."""
    from hayai.memory.strategies import candidates

    return candidates(engine.device_spec)[0].name



class PeakPoller(threading.Thread):
    """The peak of a phase that ends with someone else resetting the mark (train_lora resets it after its
    caches are made): polls the mark and keeps the highest reading before it first drops."""

    def __init__(self, memory: Memory, interval: float = 0.001):
        super().__init__(daemon=True)
        self.memory, self.interval = memory, interval
        self.best = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            value = self.memory.peak()
            if value < self.best:  # the mark was reset: the phase is over
                break
            self.best = value
            time.sleep(self.interval)

    def stop(self) -> int:
        self.done.set()
        if self.is_alive():
            self.join()
        return self.best
