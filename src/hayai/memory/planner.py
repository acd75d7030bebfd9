"""The planner: the fastest strategy whose predicted peak memory fits, and why.

`plan(facts, request, device)` is pure: model facts (parameter counts, configs), the request's shape
and a device description in, a `Plan` out. Nothing is loaded and no device is touched, so a plan for an
8 GB card is made (and tested) on any machine.

For every candidate strategy it predicts, per phase (text encoding, denoising, VAE decoding), the bytes
resident on the device (weights there at that moment + that phase's activations) and the seconds the
run takes (compute from FLOPs and the device's throughput, plus the weight transfers the placement
implies). The peak is the largest phase. A candidate fits when its peak is under the device's free
memory less a safety margin. Lossy strategies (fp8 storage) are chosen only when every lossless plan
that fits is one of the slow streaming ones, or when the caller allows them outright.

`plan_keeping_counts(store, ...)` is `plan` for callers with a store: the FLOP counts it needs (a second or
more each, on the meta device) come from earlier processes through the store, and new ones go back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hayai.hardware import GIB, DeviceSpec
from hayai.memory import costs
from hayai.memory.strategies import VAE_TILE_PX, Strategy, candidates

__all__ = ["PlanRequest", "Estimate", "Plan", "plan", "plan_keeping_counts", "estimate", "safety_margin"]

# Seconds come from the time model of `costs` (TIME_MODEL: per device class and architecture kind).
_DATACENTER = ("h100", "h200", "h800", "a100", "b200")
# A split batch runs the same FLOPs in smaller launches: a few percent slower on a busy GPU.
SPLIT_PENALTY = 1.08
# fp8 storage: every layer's weights are cast up before use, an extra read+write of the weights per step.
FP8_PENALTY = 1.10
# Sequential offload copies one layer at a time from pageable memory with no overlap: it reaches about
# half the link's rate (diffusers issue #2266: 3x+ slower than model offload on SD).
SEQUENTIAL_LINK_EFFICIENCY = 0.5
# Group offload with CUDA streams overlaps copies with compute; the overlap is imperfect.
GROUP_OVERLAP_OVERHEAD = 1.15
_CLIP_TOKENS, _T5_TOKENS = 77, 256


@dataclass(frozen=True)
class PlanRequest:
    width: int
    height: int
    batch_size: int = 1
    guidance: bool = True  # classifier-free guidance doubles the denoiser's batch
    steps: int = 20


@dataclass(frozen=True)
class Estimate:
    strategy: Strategy
    peak_bytes: int
    phase_bytes: dict[str, int]
    seconds: float
    phase_seconds: dict[str, float]
    fits: bool
    host_bytes: int  # what the strategy keeps in host RAM
    note: str = ""

    def to_dict(self) -> dict:
        return {"strategy": self.strategy.to_dict(), "peak_bytes": self.peak_bytes, "phase_bytes": self.phase_bytes,
                "seconds": round(self.seconds, 3), "phase_seconds": {k: round(v, 3) for k, v in self.phase_seconds.items()},
                "fits": self.fits, "host_bytes": self.host_bytes, "note": self.note}


@dataclass(frozen=True)
class Plan:
    chosen: Estimate
    candidates: tuple[Estimate, ...]
    device: DeviceSpec
    budget_bytes: int
    reason: str
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def strategy(self) -> Strategy:
        return self.chosen.strategy

    def ladder_after(self, strategy: Strategy) -> list[Strategy]:
        """What to try after `strategy` ran out of memory: the later candidates not predicted to need more.

        (Equal predictions stay in: the prediction was just proven wrong for the failed one.)
        """
        order = [e.strategy for e in self.candidates]
        failed = next((e for e in self.candidates if e.strategy == strategy), None)
        start = order.index(strategy) + 1 if strategy in order else 0
        return [e.strategy for e in self.candidates[start:] if failed is None or e.peak_bytes <= failed.peak_bytes]

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.strategy.name, "reason": self.reason, "budget_bytes": self.budget_bytes,
                "device": self.device.to_dict(), "warnings": list(self.warnings),
                "candidates": [e.to_dict() for e in self.candidates]}


def safety_margin(device: DeviceSpec) -> int:
    """Memory kept free for the allocator's fragmentation and kernels' workspaces: 5% of the device,
    at least 256 MiB (ComfyUI keeps 0.4-0.6 GB for inference, Forge 1 GB with its weights partly loaded)."""
    return max(256 * 1024**2, int(0.05 * device.total_bytes))


def _device_class(device: DeviceSpec) -> str:
    """The time model's class: "cpu", "datacenter" (H100-class, far from their peak in eager mode) or "gpu"."""
    if not device.accelerator:
        return "cpu"
    return "datacenter" if any(k in device.name.lower() for k in _DATACENTER) else "gpu"


def _vae_dtype(facts, dtype: str) -> str:
    """diffusers upcasts a VAE marked force_upcast (SD1/SDXL's) to fp32 when the pipeline runs in fp16."""
    return "float32" if dtype == "float16" and facts.vae_config.get("force_upcast", False) else dtype


def estimate(facts, request: PlanRequest, device: DeviceSpec, strategy: Strategy, budget: int) -> Estimate:
    """Predicted peak memory and seconds of one run of `request` under `strategy`."""
    dtype = strategy.dtype
    denoiser = facts.by_role("denoiser")[0]
    vae = facts.by_role("vae")[0]
    encoders = facts.by_role("text_encoder")
    wb = costs.weight_bytes
    denoiser_dtype = "float8" if strategy.fp8_storage else dtype
    vae_dtype = _vae_dtype(facts, dtype)
    te_bytes = [wb(e.params, dtype) for e in encoders]
    den_bytes = wb(denoiser.params, denoiser_dtype)
    vae_bytes = wb(vae.params, vae_dtype)

    batch = request.batch_size * (2 if request.guidance else 1)
    den_batch = 1 if strategy.split_batch else batch
    act_fused = costs.denoiser_activation_bytes(facts, request.width, request.height, den_batch, dtype, "sdpa")
    if device.sdpa:
        act_denoise = act_fused
    else:  # the math kernel builds the N x N scores; "auto" attention slicing builds them for half the heads
        act_math = costs.denoiser_activation_bytes(facts, request.width, request.height, den_batch, dtype, "math")
        act_denoise = act_fused + (act_math - act_fused) // (2 if strategy.attention_slicing else 1)
    tile = min(VAE_TILE_PX, facts.vae_config.get("sample_size", VAE_TILE_PX))  # as apply_strategy sets it
    act_decode = costs.vae_decode_activation_bytes(
        facts, request.width, request.height, request.batch_size, vae_dtype, tiled=strategy.vae_tiling,
        tile_size=tile if strategy.vae_tiling else None, sliced=strategy.vae_tiling,
    )
    act_encode = costs.text_encode_activation_bytes(facts, request.batch_size, dtype)

    placement = strategy.placement
    if placement in ("resident", "cpu"):
        resident = sum(te_bytes) + den_bytes + vae_bytes
        phases = {"text_encode": resident + act_encode, "denoise": resident + act_denoise, "vae_decode": resident + act_decode}
    elif placement == "te_cpu":
        resident = den_bytes + vae_bytes
        phases = {"text_encode": resident, "denoise": resident + act_denoise, "vae_decode": resident + act_decode}
    elif placement == "te_offload":
        resident = den_bytes + vae_bytes
        streamed = max((2 * wb(e.largest_layer_params, dtype) for e in encoders), default=0)
        phases = {"text_encode": resident + streamed + act_encode, "denoise": resident + act_denoise,
                  "vae_decode": resident + act_decode}
    elif placement == "model_offload":
        phases = {"text_encode": max(te_bytes, default=0) + act_encode, "denoise": den_bytes + act_denoise,
                  "vae_decode": vae_bytes + act_decode}
    elif placement == "group_offload":
        # the denoiser streams block by block (one in use, the next prefetched) while its loose modules
        # (embeddings, norms: diffusers' "unmatched" group) stay on; the rest streams layer by layer
        layers = lambda c, d: 2 * wb(c.largest_layer_params, d)  # noqa: E731
        blocks = wb(denoiser.unblocked_params, denoiser_dtype) + 2 * wb(denoiser.largest_block_params, denoiser_dtype)
        phases = {"text_encode": max((layers(e, dtype) for e in encoders), default=0) + act_encode,
                  "denoise": blocks + act_denoise, "vae_decode": layers(vae, vae_dtype) + act_decode}
    else:  # sequential offload: one layer at a time
        layer = lambda c, d: wb(c.largest_layer_params, d)  # noqa: E731
        phases = {"text_encode": max((layer(e, dtype) for e in encoders), default=0) + act_encode,
                  "denoise": layer(denoiser, denoiser_dtype) + act_denoise,
                  "vae_decode": layer(vae, vae_dtype) + act_decode}

    # -- time ------------------------------------------------------------------------------------
    on_host = placement == "cpu"  # the CPU strategy computes on the host whatever the device
    tflops = device.host_tflops if on_host and device.accelerator else device.tflops
    device_class = "cpu" if on_host else _device_class(device)
    kind = costs.architecture_kind(facts)
    eff = costs.efficiency(device_class, kind)
    flops_step = costs.denoiser_flops(facts, request.width, request.height, batch)
    step = costs.step_seconds(flops_step, tflops, device_class, kind)
    if strategy.split_batch and batch > 1:
        step *= SPLIT_PENALTY
    if strategy.fp8_storage:
        step *= FP8_PENALTY
    decode_flops = costs.vae_decode_flops(facts, request.width, request.height, request.batch_size,
                                          tiled=strategy.vae_tiling, tile_size=tile if strategy.vae_tiling else None)
    decode = costs.compute_seconds(decode_flops, tflops, eff)
    encode_flops = sum(2 * e.params * (_T5_TOKENS if e.name == "text_encoder_3" else _CLIP_TOKENS) for e in encoders)
    encode_flops *= request.batch_size * (2 if request.guidance else 1)
    encode = costs.compute_seconds(encode_flops, tflops, eff)
    transfer = 0.0
    link = device.link_gbps
    # streamed text encoders cross the link once per prompt encoded (the negative prompt too, with CFG)
    streamed_te = sum(te_bytes) * (2 if request.guidance else 1)
    if placement == "te_cpu":
        encode = costs.compute_seconds(encode_flops, device.host_tflops, costs.efficiency("cpu", kind))
    elif placement == "te_offload":
        transfer = costs.transfer_seconds(streamed_te, link)
    elif placement == "model_offload":
        transfer = costs.transfer_seconds(2 * (sum(te_bytes) + den_bytes + vae_bytes), link)  # in and out, per run
    elif placement == "group_offload":
        per_step = costs.transfer_seconds(den_bytes, link)
        step = max(step, per_step) * GROUP_OVERLAP_OVERHEAD
        transfer = costs.transfer_seconds(streamed_te + vae_bytes, link)
    elif placement == "sequential_offload":
        step += costs.transfer_seconds(den_bytes, link * SEQUENTIAL_LINK_EFFICIENCY)
        transfer = costs.transfer_seconds(streamed_te + vae_bytes, link * SEQUENTIAL_LINK_EFFICIENCY)
    phase_seconds = {"text_encode": encode, "denoise": step * request.steps, "vae_decode": decode, "transfer": transfer}

    peak = max(phases.values())
    # group offloading with CUDA streams keeps a pinned copy of every weight it streams beside the original
    # (diffusers ModuleGroup._init_cpu_param_dict) until the first onload swaps them: 2x at construction
    streams = device.kind in ("cuda", "rocm")
    if placement == "resident":
        host = 0
    elif placement == "te_cpu":
        host = sum(wb(e.params, "float32") for e in encoders)  # encoded in fp32 on the CPU
    elif placement == "te_offload":
        host = sum(te_bytes) * (2 if streams else 1)
    elif on_host:
        host = peak
    elif placement == "group_offload" and streams:
        host = 2 * (sum(te_bytes) + den_bytes + vae_bytes)
    else:
        host = sum(te_bytes) + den_bytes + vae_bytes
    host_ok = host <= 0.8 * device.host_ram_bytes  # leave the OS and the rest of the process a fifth
    device_ok = (peak <= budget) if not (on_host and device.accelerator) else True
    fits = device_ok and host_ok
    note = "" if host_ok else "host RAM too small for the weights kept there"
    if on_host and device.accelerator:
        peak = 0  # nothing on the accelerator
        phases = {k: 0 for k in phases}
    return Estimate(strategy, int(peak), {k: int(v) for k, v in phases.items()}, sum(phase_seconds.values()),
                    phase_seconds, fits, int(host), note)


def plan(facts, request: PlanRequest, device: DeviceSpec, *, allow_lossy: bool | None = None,
         start_after: Strategy | None = None) -> Plan:
    """The fastest fitting strategy for `request` on `device`, with every candidate's estimate.

    `allow_lossy`: True admits fp8 storage on speed alone, False never; None (default) admits it only
    when the best lossless plan streams weights layer by layer or runs on the CPU.
    """
    budget = device.free_bytes - safety_margin(device)
    estimates = tuple(estimate(facts, request, device, s, budget) for s in candidates(device))
    fitting = [e for e in estimates if e.fits]
    warnings: list[str] = []
    if not fitting:
        leanest = min(estimates, key=lambda e: e.peak_bytes)
        warnings.append(
            f"no strategy is predicted to fit in {budget / GIB:.2f} GiB; trying the leanest "
            f"({leanest.strategy.name}, {leanest.peak_bytes / GIB:.2f} GiB): lower the resolution or batch size"
        )
        return Plan(leanest, estimates, device, budget, "nothing fits; the leanest strategy is the best chance", tuple(warnings))
    lossless = [e for e in fitting if e.strategy.lossless]
    best_lossless = min(lossless, key=lambda e: e.seconds) if lossless else None
    slow = best_lossless is None or best_lossless.strategy.placement in ("sequential_offload", "cpu")
    admitted = fitting if (allow_lossy or (allow_lossy is None and slow)) else lossless
    chosen = min(admitted, key=lambda e: e.seconds)
    return Plan(chosen, estimates, device, budget, _reason(chosen, estimates, best_lossless, budget), tuple(warnings))


def plan_keeping_counts(store, facts, request: PlanRequest, device: DeviceSpec, **options) -> Plan:
    """`plan(facts, request, device, **options)`, with the FLOP counts kept in `store` (a `hayai.store.Store`)."""
    kept = store.flop_counts()
    costs.remember_flop_counts(kept)
    result = plan(facts, request, device, **options)
    new = {key: flops for key, flops in costs.flop_counts().items() if key not in kept}
    if new:
        store.save_flop_counts(new)
    return result


def _reason(chosen: Estimate, estimates, best_lossless: Estimate | None, budget: int) -> str:
    gib = lambda b: f"{b / GIB:.2f} GiB" if b >= GIB / 4 else f"{b / 1024**2:.0f} MiB"  # noqa: E731
    faster = [e for e in estimates if e.seconds < chosen.seconds and not e.fits]
    when = f"~{chosen.seconds:.1f} s" if chosen.seconds >= 0.1 else f"~{chosen.seconds * 1000:.0f} ms of compute"
    text = f"{chosen.strategy.name}: predicted peak {gib(chosen.peak_bytes)} of {gib(budget)} available, {when}"
    if faster:
        quickest = min(faster, key=lambda e: e.seconds)
        text += f"; {quickest.strategy.name} would be faster (~{quickest.seconds:.1f} s) but needs {gib(quickest.peak_bytes)}"
    if not chosen.strategy.lossless and best_lossless is not None:
        text += (f"; fp8 storage changes pixels slightly, chosen because the best lossless plan "
                 f"({best_lossless.strategy.name}) would take ~{best_lossless.seconds:.1f} s")
    return text
