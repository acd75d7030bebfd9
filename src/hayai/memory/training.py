"""Memory settings for LoRA training, proposed for a device from the model's facts (pure, like `plan`).

What training keeps on the device:
- the frozen base weights in the weight dtype (half precision with mixed precision, else float32): the
  denoiser always; the text encoders unless their outputs are cached (then they go back to the CPU);
  the VAE unless the latents are cached (same);
- the LoRA: weights, gradients and AdamW's two moments in float32 (16 bytes a parameter; 8-bit AdamW
  keeps its moments in 2 bytes);
- the activations kept for the backward pass: `TRAIN_ACTIVATION_FACTOR` times the peak activations of an
  inference forward (`costs.denoiser_activation_bytes`), or `CHECKPOINTED_FACTOR` times with gradient
  checkpointing (only block inputs are kept; one block is recomputed at a time). Distillation
  (`hayai train distill`) adds three denoiser passes without gradient (the teacher's two and the target),
  run before the student's so that their activations are freed before it keeps its own: the same peak.

The proposal: mixed precision in bf16 where the device has it (fp16 otherwise; float32 on a CPU, whose
half-precision kernels are slow), latents and text embeddings cached (unless captions change between
epochs or the text encoders train), 8-bit AdamW where bitsandbytes runs (CUDA), gradient checkpointing
only if the rest does not fit, and the largest batch of 4, 2, 1 that fits (no more than a quarter of
the training images). Whatever the config sets explicitly is kept as given.

Before the first step the caches are made with the text encoders and the VAE (in float32) on the
device, the denoiser still on the CPU, and the VAE encoding a chunk of images at once: the largest chunk of 8, 4, 2, 1 that fits is
planned too (`caching_bytes`). The VAE encoder's activations are taken as those of its mirror, the
decoder (`costs.vae_decode_activation_bytes`, not calibrated for encoding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hayai.hardware import GIB, DeviceSpec
from hayai.memory import costs
from hayai.memory.planner import safety_margin

__all__ = ["CACHE_CHUNKS", "CHECKPOINTED_FACTOR", "TRAIN_ACTIVATION_FACTOR", "TrainingPlan", "TrainingRequest",
           "caching_bytes", "plan_training", "training_bytes"]

# A training step's peak above the weights / the inference activation estimate: the slope between 256 and
# 384 px of a real SD1.5 U-Net with LoRA on its attention, float32 on a CPU (measured 11.5 and 2.28:
# benchmarks/lora_training.py --calibrate, results/lora_training_calibration_cpu.json), rounded up. The
# slope leaves out a constant the CPU adds (oneDNN's copy of the largest conv weight, ~110 MiB for SD1.5),
# as the inference model does; the planner's safety margin covers a GPU's workspaces.
TRAIN_ACTIVATION_FACTOR = 12.0
CHECKPOINTED_FACTOR = 2.5
LORA_BYTES_PER_PARAM = {"adamw": 16, "adamw8bit": 10}  # fp32 weight + fp32 grad + moments (2 x fp32, or 2 x 8-bit + scales)
_BATCHES = (4, 2, 1)
CACHE_CHUNKS = (8, 4, 2, 1)  # images the VAE encodes at once while caching latents


@dataclass(frozen=True)
class TrainingRequest:
    width: int
    height: int
    lora_params: int
    train_images: int
    train_text_encoder: bool = False
    captions_vary: bool = False  # shuffled captions: their embeddings change, so they cannot be cached
    batch_size: int | None = None  # None: the planner's choice; the rest likewise
    mixed_precision: str | None = None
    gradient_checkpointing: bool | None = None
    cache_latents: bool | None = None
    cache_text_embeddings: bool | None = None
    optimizer: str | None = None


@dataclass(frozen=True)
class TrainingPlan:
    device: str  # torch device
    mixed_precision: str  # "no", "fp16", "bf16"
    weight_dtype: str  # the frozen base weights: "float32", "float16", "bfloat16"
    batch_size: int
    gradient_checkpointing: bool
    cache_latents: bool
    cache_text_embeddings: bool
    optimizer: str
    peak_bytes: int
    budget_bytes: int
    parts: dict  # bytes by what holds them
    reasons: tuple[str, ...]
    cache_chunk: int = CACHE_CHUNKS[0]  # images the VAE encodes at once while caching
    cache_peak_bytes: int = 0  # predicted device bytes while caching

    @property
    def fits(self) -> bool:
        """Whether a training step is predicted to fit."""
        return self.peak_bytes <= self.budget_bytes

    @property
    def cache_fits(self) -> bool:
        """Whether making the caches (before the first step) is predicted to fit."""
        return self.cache_peak_bytes <= self.budget_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits, "cache_fits": self.cache_fits}


def _dtype(precision: str) -> str:
    return {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]


def training_bytes(facts, request: TrainingRequest, *, precision: str, batch: int, checkpointing: bool,
                   cache_latents: bool, cache_text: bool, optimizer: str) -> dict[str, int]:
    """Predicted device bytes of a training step, by part."""
    dtype = _dtype(precision)
    denoiser = facts.by_role("denoiser")[0]
    parts = {"denoiser": costs.weight_bytes(denoiser.params, dtype)}
    if not cache_text or request.train_text_encoder:
        parts["text_encoders"] = sum(costs.weight_bytes(e.params, dtype) for e in facts.by_role("text_encoder"))
    if not cache_latents:
        parts["vae"] = costs.weight_bytes(facts.by_role("vae")[0].params, "float32")
    parts["lora"] = request.lora_params * LORA_BYTES_PER_PARAM[optimizer]
    inference = costs.denoiser_activation_bytes(facts, request.width, request.height, batch, dtype, "sdpa")
    parts["activations"] = int(inference * (CHECKPOINTED_FACTOR if checkpointing else TRAIN_ACTIVATION_FACTOR))
    return parts


def caching_bytes(facts, request: TrainingRequest, *, precision: str, chunk: int) -> dict[str, int]:
    """Predicted device bytes while the caches are made: the text encoders and the VAE on the device (the
    VAE in float32, as it encodes; the denoiser joins after), the LoRA's float32 weights (no optimizer
    state yet), and the VAE encoding `chunk` images."""
    dtype = _dtype(precision)
    return {
        "text_encoders": sum(costs.weight_bytes(e.params, dtype) for e in facts.by_role("text_encoder")),
        "vae": costs.weight_bytes(facts.by_role("vae")[0].params, "float32"),
        "lora": request.lora_params * 4,
        "activations": costs.vae_decode_activation_bytes(facts, request.width, request.height, chunk, "float32"),
    }


def plan_training(facts, request: TrainingRequest, device: DeviceSpec, *, bitsandbytes: bool = False) -> TrainingPlan:
    """The proposed precision, caching, optimizer, checkpointing and batch size for `request` on `device`."""
    reasons: list[str] = []
    gib = lambda b: f"{b / GIB:.2f} GiB" if b >= GIB / 4 else f"{b / 1024**2:.0f} MiB"  # noqa: E731

    precision = request.mixed_precision
    if precision is None:
        if not device.accelerator:
            precision = "no"
            reasons.append("float32: CPU half-precision kernels are slower than float32")
        else:
            precision = "bf16" if device.bf16 else "fp16"
            reasons.append(f"{precision} mixed precision: half the weight memory, tensor-core speed (LoRA kept in float32)")
    cache_latents = True if request.cache_latents is None else request.cache_latents
    if request.cache_latents is None:
        reasons.append("latents cached: each image is encoded once and the VAE leaves the device")
    cache_text = request.cache_text_embeddings
    if cache_text is None:
        cache_text = not (request.captions_vary or request.train_text_encoder)
        reasons.append("text embeddings cached: each caption is encoded once and the text encoders leave the device"
                       if cache_text else "text embeddings not cached: "
                       + ("captions are shuffled" if request.captions_vary else "the text encoders train"))
    optimizer = request.optimizer
    if optimizer is None:
        optimizer = "adamw8bit" if bitsandbytes and device.kind == "cuda" else "adamw"
        if optimizer == "adamw8bit":
            reasons.append("8-bit AdamW (bitsandbytes): optimizer moments in a quarter of the memory")

    budget = device.free_bytes - safety_margin(device)
    batches = (request.batch_size,) if request.batch_size else tuple(
        b for b in _BATCHES if b <= max(1, request.train_images // 4)) or (1,)
    checkpointing_options = (request.gradient_checkpointing,) if request.gradient_checkpointing is not None else (False, True)
    chosen = None
    for checkpointing in checkpointing_options:  # the largest batch without checkpointing, then with it
        for batch in batches:
            parts = training_bytes(facts, request, precision=precision, batch=batch, checkpointing=checkpointing,
                                   cache_latents=cache_latents, cache_text=cache_text, optimizer=optimizer)
            if sum(parts.values()) <= budget:
                chosen = (batch, checkpointing, parts)
                break
        if chosen:
            break
    if chosen is None:  # nothing fits: the leanest, with a warning
        batch, checkpointing = min(batches), checkpointing_options[-1]
        parts = training_bytes(facts, request, precision=precision, batch=batch, checkpointing=checkpointing,
                               cache_latents=cache_latents, cache_text=cache_text, optimizer=optimizer)
        reasons.append(f"nothing is predicted to fit in {gib(budget)} (leanest: {gib(sum(parts.values()))}); "
                       "lower the resolution or the rank, or enable what the config turned off")
    else:
        batch, checkpointing, parts = chosen
        if checkpointing and request.gradient_checkpointing is None:
            reasons.append("gradient checkpointing: without it the step would not fit")
        if request.batch_size is None:
            reasons.append(f"batch {batch}: the largest of {', '.join(map(str, batches))} that fits")
    peak = sum(parts.values())
    reasons.append(f"predicted peak {gib(peak)} of {gib(budget)} available on {device.name}")
    cache_chunk, cache_peak = _cache_chunk(facts, request, precision, budget)
    reasons.append(f"caching: the VAE encodes {cache_chunk} image{'s' if cache_chunk > 1 else ''} at once "
                   f"(predicted peak {gib(cache_peak)})" + ("" if cache_peak <= budget else
                   f"; even one image is predicted to need more than the {gib(budget)} available: lower the resolution"))
    return TrainingPlan(device.torch_device, precision, _dtype(precision), batch, checkpointing, cache_latents, cache_text,
                        optimizer, int(peak), int(budget), {k: int(v) for k, v in parts.items()}, tuple(reasons),
                        cache_chunk, int(cache_peak))


def _cache_chunk(facts, request: TrainingRequest, precision: str, budget: int) -> tuple[int, int]:
    """The largest chunk of `CACHE_CHUNKS` whose caching peak fits (the smallest if none does), and that peak."""
    for chunk in CACHE_CHUNKS:
        peak = sum(caching_bytes(facts, request, precision=precision, chunk=chunk).values())
        if peak <= budget:
            return chunk, peak
    return chunk, peak
