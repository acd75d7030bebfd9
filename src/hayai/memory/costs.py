"""The cost model: bytes and FLOPs of each phase of a generation, and the seconds they take.

- Weights: parameter count x bytes per element.
- FLOPs: counted exactly by `torch.utils.flop_counter.FlopCounterMode` while the denoiser (or VAE
  decoder) runs on the meta device at the requested size: no memory, no weights, a second or two for
  SDXL/SD3.5 at 1024 px, counted once per (config, latent size, library versions) and scaled by the batch
  (exact: every op is batch-parallel). The counts of this process are in `flop_counts()`; the engine
  keeps them in its store and hands them back with `remember_flop_counts`, so a new process does not
  count again. Text encoding is approximated as 2 x matmul params x tokens.
- Activations: an analytic model of what eager inference keeps alive at its peak, from the configs
  (channels and tokens at each level), scaled by factors measured on a CPU
  (`benchmarks/calibrate_activations.py`, figures in `benchmarks/results/activation_calibration_cpu.json`).
  "sdpa" attention (flash / memory-efficient kernels) never holds the N x N scores; "math" attention
  (the classic AttnProcessor, or SDPA's math backend) holds scores and probabilities at once.
- Time: one model, `step = FLOPs / (peak x e[device class][architecture kind]) + launches x t_launch`
  (`TIME_MODEL`, `step_seconds`), and bytes / link bandwidth. Its constants are not yet calibrated on a
  GPU; `benchmarks/gpu_check` measures what fits them, and a fitted `benchmarks/results/time_model.json`
  replaces them when present.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

__all__ = [
    "ATTENTION_KINDS", "CLIP_TOKENS", "T5_TOKENS", "DTYPE_BYTES", "TIME_MODEL", "time_model", "architecture_kind",
    "efficiency", "step_seconds", "dtype_bytes", "weight_bytes", "latent_size",
    "denoiser_flops", "vae_decode_flops", "flop_counts", "remember_flop_counts", "text_encode_flops", "vae_tiles", "denoiser_activation_bytes",
    "vae_decode_activation_bytes", "text_encode_activation_bytes", "transfer_seconds", "compute_seconds",
]

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}
CLIP_TOKENS = 77  # CLIP's context length (tokenizer.model_max_length); every SD pipeline pads to it
T5_TOKENS = 256  # StableDiffusion3Pipeline's max_sequence_length default; SD3 attends to 77 + 256 text tokens
ATTENTION_KINDS = ("sdpa", "math")
TILE_OVERLAP = 0.25  # AutoencoderKL.tile_overlap_factor (diffusers autoencoder_kl.py)

# --- Calibration factors: measured peak / analytic peak, fitted on a 2-core CPU in float32 (torch 2.13),
# see benchmarks/results/activation_calibration_cpu.json. The analytic counts are in elements per image.
UNET_FACTOR = 1.10  # sd15 (full) and sdxl (1/1/1 transformer depth) UNets, 256-384 px, batch 8
MMDIT_FACTOR = 1.06  # sd35m MMDiT at 2 layers (one dual-attention), 256-512 px, batch 2
VAE_FACTOR = 1.08  # sd15 VAE decoder, 256-384 px, batch 1
SCORES_FACTOR = 1.11  # on the math-attention term (2 x heads x N^2: scores and probabilities at once)
TEXT_FACTOR = 1.5  # not calibrated (text activations are < 1% of the text encoders' weights): a margin

# The time model: step = FLOPs / (peak x efficiency) + launches x launch_seconds, with the efficiency by device
# class ("cpu", "datacenter" GPUs, consumer "gpu"s) and architecture kind ("unet", "mmdit"). NOT YET CALIBRATED
# ON A GPU. Where the figures come from (REFERENCE.md §7: it/s at batch 1 with CFG, over the FLOPs counted here,
# against the H100/H800 SXM dense bf16 peak of 989 TFLOP/s):
#   SD1.5 @512 (H100):       1.607 TFLOP x 54.5 it/s =  87.6 TFLOP/s ->  8.9%  (launch-bound: small kernels)
#   SDXL @1024 (H100):      13.52  TFLOP x 14.9 it/s = 201.5 TFLOP/s -> 20.4%
#   SD3-medium @1024 (H800): 17.81 TFLOP x 15.1 it/s = 268.9 TFLOP/s -> 27.2%  (2B MMDiT: few, large GEMMs)
# With no launch term fitted yet, the UNet figure (0.18) folds SD1.5's launch overhead in; consumer cards run
# closer to their (lower) peak, 0.3 until measured; the CPU's 0.5 is what the 2-core CPU calibration gives.
# A fit from measured sizes (benchmarks/gpu_check.py) goes in benchmarks/results/time_model.json, same keys.
TIME_MODEL: dict = {
    "efficiency": {"cpu": {"unet": 0.5, "mmdit": 0.5}, "datacenter": {"unet": 0.18, "mmdit": 0.27},
                   "gpu": {"unet": 0.30, "mmdit": 0.30}},
    "launch_seconds": {"cpu": 0.0, "datacenter": 0.0, "gpu": 0.0},  # per kernel launch; 0 until fitted
    "launches_per_step": {"unet": 0, "mmdit": 0},  # kernel launches of one denoiser forward; 0 until fitted
    "calibrated": False,
}
CALIBRATION_FILE = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "time_model.json"


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def weight_bytes(params: int, dtype: str) -> int:
    """Bytes of `params` weights stored in `dtype` (float32 4, float16/bfloat16 2, float8 1)."""
    return int(params) * dtype_bytes(dtype)


def _patch(facts) -> int:
    return int(facts.denoiser_config.get("patch_size") or 1)


def latent_size(facts, width: int, height: int) -> tuple[int, int]:
    """(latent height, latent width) of a `width` x `height` image; both must be multiples of the model's step."""
    step = facts.vae_scale_factor * _patch(facts)
    for name, value in (("width", width), ("height", height)):
        if value <= 0 or value % step:
            raise ValueError(f"{name}={value} must be a positive multiple of {step} for this model")
    return height // facts.vae_scale_factor, width // facts.vae_scale_factor


def _check_batch(batch: int) -> None:
    if batch < 1:
        raise ValueError(f"batch={batch} must be at least 1")


def _text_tokens(facts) -> int:
    return CLIP_TOKENS + (T5_TOKENS if facts.denoiser_class == "SD3Transformer2DModel" else 0)


# --- FLOPs ------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _meta_model(class_name: str, config_json: str):
    import diffusers
    import torch

    with torch.device("meta"):
        return getattr(diffusers, class_name).from_config(json.loads(config_json)).eval()


_FLOP_COUNTS: dict[str, float] = {}  # key (see _counted) -> FLOPs at batch 1


def flop_counts() -> dict[str, float]:
    """Every FLOP count this process has made or been handed, by key (the store keeps them)."""
    return dict(_FLOP_COUNTS)


def remember_flop_counts(counts: Mapping[str, float]) -> None:
    """Take counts made earlier (`flop_counts()` of another process), so they are not made again."""
    _FLOP_COUNTS.update(counts)


def _counted(what: tuple, count: Callable[[], float]) -> float:
    """FLOPs of `what` from the counts, or `count()`ed and added. The key names torch's and diffusers'
    versions too: a new version may count (or build the model) differently."""
    import diffusers
    import torch

    key = hashlib.sha256(json.dumps([*what, torch.__version__, diffusers.__version__]).encode()).hexdigest()
    if key not in _FLOP_COUNTS:
        _FLOP_COUNTS[key] = count()
    return _FLOP_COUNTS[key]


def _count_flops(run) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def _denoiser_inputs(class_name: str, config: dict, h: int, w: int, batch: int, tokens: int) -> dict:
    import torch

    def meta(*shape):
        return torch.empty(*shape, device="meta")

    if class_name == "UNet2DConditionModel":
        context = config.get("encoder_hid_dim") or config["cross_attention_dim"]
        inputs = dict(sample=meta(batch, config["in_channels"], h, w), timestep=meta(batch),
                      encoder_hidden_states=meta(batch, tokens, context))
        if config.get("addition_embed_type") == "text_time":
            pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
            inputs["added_cond_kwargs"] = {"text_embeds": meta(batch, pooled), "time_ids": meta(batch, 6)}
        return inputs
    if class_name == "SD3Transformer2DModel":
        return dict(hidden_states=meta(batch, config["in_channels"], h, w), timestep=meta(batch),
                    encoder_hidden_states=meta(batch, tokens, config["joint_attention_dim"]),
                    pooled_projections=meta(batch, config["pooled_projection_dim"]))
    raise ValueError(f"denoiser_class={class_name!r} has no FLOP model; hayai counts UNet2DConditionModel and SD3Transformer2DModel")


def _denoiser_flops(class_name: str, config_json: str, h: int, w: int, tokens: int) -> float:
    def count() -> float:
        model = _meta_model(class_name, config_json)
        inputs = _denoiser_inputs(class_name, json.loads(config_json), h, w, 1, tokens)
        return _count_flops(lambda: model(**inputs, return_dict=False))

    return _counted(("denoiser", class_name, config_json, h, w, tokens), count)


def denoiser_flops(facts, width: int, height: int, batch: int, *, text_tokens: int | None = None) -> float:
    """FLOPs of one denoiser forward on `batch` latents (with CFG, batch = 2 x images).

    Counted once per (config, latent size, tokens) at batch 1: every op is batch-parallel, so FLOPs are
    exactly proportional to the batch.
    """
    h, w = latent_size(facts, width, height)
    _check_batch(batch)
    tokens = _text_tokens(facts) if text_tokens is None else text_tokens
    config_json = json.dumps(facts.denoiser_config, sort_keys=True)
    return batch * _denoiser_flops(facts.denoiser_class, config_json, h, w, tokens)


def vae_tiles(facts, width: int, height: int, tile_size: int | None = None) -> list[tuple[int, int]]:
    """(height, width) in latent pixels of every tile diffusers' `tiled_decode` decodes, in order.

    Tiles are `tile_size` px (default `vae.config.sample_size`) with 25% overlap; an image no larger than
    one tile is decoded whole (AutoencoderKL._decode only tiles above `tile_latent_min_size`).
    """
    h, w = latent_size(facts, width, height)
    tile = (tile_size or facts.vae_config["sample_size"]) // facts.vae_scale_factor
    if tile < 1:
        raise ValueError(f"tile_size={tile_size} is smaller than one latent pixel")
    if h <= tile and w <= tile:
        return [(h, w)]
    stride = int(tile * (1 - TILE_OVERLAP))
    return [(min(tile, h - i), min(tile, w - j)) for i in range(0, h, stride) for j in range(0, w, stride)]


def _decode_flops(config_json: str, h: int, w: int) -> float:
    def count() -> float:
        import torch

        vae = _meta_model("AutoencoderKL", config_json)
        z = torch.empty(1, json.loads(config_json)["latent_channels"], h, w, device="meta")
        return _count_flops(lambda: vae.decode(z))

    return _counted(("vae_decode", config_json, h, w), count)


def vae_decode_flops(facts, width: int, height: int, batch: int, *, tiled: bool = False, tile_size: int | None = None) -> float:
    """FLOPs of decoding `batch` latents (tiled: every overlapping tile, so more than the whole image)."""
    _check_batch(batch)
    config_json = json.dumps(facts.vae_config, sort_keys=True)
    tiles = vae_tiles(facts, width, height, tile_size) if tiled else [latent_size(facts, width, height)]
    return batch * sum(_decode_flops(config_json, th, tw) for th, tw in tiles)


def _encoder_tokens(component) -> int:
    return T5_TOKENS if component.name == "text_encoder_3" else CLIP_TOKENS


def text_encode_flops(facts, batch: int) -> float:
    """Approximate FLOPs of encoding `batch` prompts with every text encoder: 2 x matmul params x tokens.

    The token-embedding table (each text encoder's largest layer) is a lookup, not a matmul; attention
    scores (tokens^2 per layer, < 10% at 77-256 tokens) are left out.
    """
    _check_batch(batch)
    encoders = facts.by_role("text_encoder")
    return float(sum(2 * (c.params - c.largest_layer_params) * _encoder_tokens(c) * batch for c in encoders))


# --- Activations ------------------------------------------------------------------------------


def _level_sizes(h: int, w: int, levels: int) -> list[int]:
    """Pixels at each UNet level: stride-2 convs with padding 1 round up."""
    sizes = []
    for _ in range(levels):
        sizes.append(h * w)
        h, w = (h + 1) // 2, (w + 1) // 2
    return sizes


def _per_level(value, levels: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def _unet_elements(config: dict, h: int, w: int, tokens: int, math_attention: bool) -> list[tuple[float, float]]:
    """Candidate peaks of a UNet forward: (linear elements, attention-score elements) per image.

    Down path outputs wait in the skip list for the up path; at up level l the skips of levels <= l are
    still held. On top of them, the largest working set of a level: a transformer block's GEGLU
    feed-forward (input, norm, 8C projection, 4C gelu(gate), 4C product, output, residual: 20C), a
    resnet on the concatenated input (input, its two sources, norm, silu: 4 x Cin), an upsampler
    (interpolated + convolved: 2 x C at the finer level). Math attention adds scores + probabilities
    (2 x heads x N^2, and 2 x heads x N x tokens for cross-attention) over the attention's own 7C.
    """
    channels = config["block_out_channels"]
    levels = len(channels)
    sizes = _level_sizes(h, w, levels)
    heads = _per_level(config.get("num_attention_heads") or config["attention_head_dim"], levels)
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in reversed(config["up_block_types"])]
    layers = config["layers_per_block"]
    skips, held = channels[0] * sizes[0], []
    for level, (c, n) in enumerate(zip(channels, sizes)):
        skips += layers * c * n + (c * sizes[level + 1] if level + 1 < levels else 0)
        held.append(skips)
    candidates = []
    for level, (c, n) in enumerate(zip(channels, sizes)):
        coarser = channels[min(level + 1, levels - 1)]
        work = [4 * (coarser + c) * n]  # first resnet of the up block on cat(hidden, skip)
        if level + 1 < levels:
            work.append(2 * channels[level + 1] * n)  # the upsampler from the coarser level
        attention = down_attn[level] or up_attn[level]
        if attention:
            work.append(20 * c * n)
        candidates.append((held[level] + max(work), 0.0))
        if attention and math_attention:
            candidates.append((held[level] + 7 * c * n, 2 * heads[level] * (n * n + n * tokens)))
    return candidates


def _mmdit_elements(config: dict, h: int, w: int, tokens: int, math_attention: bool) -> list[tuple[float, float]]:
    """Candidate peaks of an SD3 MMDiT forward: (linear elements, score elements) per image.

    Image (N) and text (T) streams of width D = heads x head_dim. The peak is the image stream's GELU
    feed-forward: residual, adaLN-modulated norm, 4D projection, 4D activation, output: ~12 D per
    image token, while the text stream holds its residual and modulated copies (~6 D per text token;
    measured: 12.3 D and 6.1 D). The joint attention holds residuals, norms, q/k/v and its output
    (~7 D per token); math attention adds scores + probabilities, 2 x heads x (N + T)^2.
    """
    patch = config["patch_size"]
    n = (h // patch) * (w // patch)
    heads = config["num_attention_heads"]
    width = heads * config["attention_head_dim"]
    feed_forward = (width * (12 * n + 6 * tokens), 0.0)
    attention = (width * 7 * (n + tokens), 2 * heads * (n + tokens) ** 2 if math_attention else 0.0)
    return [feed_forward, attention]


def _peak(candidates: list[tuple[float, float]], factor: float) -> float:
    return max(factor * linear + SCORES_FACTOR * scores for linear, scores in candidates)


def denoiser_activation_bytes(facts, width: int, height: int, batch: int, dtype: str, attention: str = "sdpa") -> int:
    """Peak bytes of one denoiser forward's activations (on top of the weights), for `batch` latents."""
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention={attention!r} is not one of {ATTENTION_KINDS}")
    h, w = latent_size(facts, width, height)
    _check_batch(batch)
    math_attention = attention == "math"
    tokens = _text_tokens(facts)
    if facts.denoiser_class == "UNet2DConditionModel":
        elements = _peak(_unet_elements(facts.denoiser_config, h, w, tokens, math_attention), UNET_FACTOR)
    elif facts.denoiser_class == "SD3Transformer2DModel":
        elements = _peak(_mmdit_elements(facts.denoiser_config, h, w, tokens, math_attention), MMDIT_FACTOR)
    else:
        raise ValueError(f"denoiser_class={facts.denoiser_class!r} has no activation model")
    return int(batch * dtype_bytes(dtype) * elements)


def _decoder_elements(config: dict, h: int, w: int, math_attention: bool) -> list[tuple[float, float]]:
    """Candidate peaks of AutoencoderKL's decoder on an h x w latent: (linear, score elements) per image.

    Levels run coarse to fine (reversed block_out_channels), each 4x the pixels of the last. At each:
    a resnet (input, norm, silu, conv: 3 x Cin + Cout) and the upsampler into the next level
    (interpolated + convolved: 2 x C at 4x the pixels); the mid block's attention (one head) holds
    q, k, v, output and input (5C at the latent size) and, with math attention, 2 x N^2 scores; the
    head (norm, silu, 3-channel conv) 2C + 3.
    """
    channels = list(reversed(config["block_out_channels"]))
    n = h * w
    work = []
    for level, c in enumerate(channels):
        pixels = n * 4**level
        work.append((3 * channels[max(level - 1, 0)] + c) * pixels)
        if level + 1 < len(channels):
            work.append(c * pixels + 2 * c * pixels * 4)
    work.append((2 * channels[-1] + 3) * n * 4 ** (len(channels) - 1))
    attention = (5 * channels[0] * n, 2.0 * n * n if math_attention else 0.0)
    return [(max(work), 0.0), attention]


def vae_decode_activation_bytes(
    facts, width: int, height: int, batch: int, dtype: str, tiled: bool = False, tile_size: int | None = None,
    *, sliced: bool = False, attention: str = "sdpa",
) -> int:
    """Peak bytes of decoding `batch` latents (on top of the VAE's weights).

    Tiled decoding works on tiles of `tile_size` px (default `vae.config.sample_size`) and keeps the decoded
    tiles (3 channels each) for blending; slicing decodes one image at a time. The output image is counted.
    """
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention={attention!r} is not one of {ATTENTION_KINDS}")
    h, w = latent_size(facts, width, height)
    _check_batch(batch)
    tiles = vae_tiles(facts, width, height, tile_size) if tiled else [(h, w)]
    th, tw = max(tiles, key=lambda t: t[0] * t[1])
    per_image = _peak(_decoder_elements(facts.vae_config, th, tw, attention == "math"), VAE_FACTOR)
    per_pass = 1 if sliced else batch
    pixel = facts.vae_scale_factor**2
    out_channels = facts.vae_config.get("out_channels", 3)
    # the decoded image; tiled: every decoded tile (kept for blending), the cropped rows and the joined image
    kept = out_channels * pixel * (h * w if len(tiles) == 1 else sum(a * b for a, b in tiles) + 2 * h * w)
    elements = per_pass * per_image + batch * kept
    return int(elements * dtype_bytes(dtype))


def text_encode_activation_bytes(facts, batch: int, dtype: str) -> int:
    """Peak bytes of encoding `batch` prompts (the largest encoder; encoders run one after another).

    Per token of width D: residual, norm, q/k/v, attention output and a 4D MLP (input and activation,
    ~16 D), plus every layer's hidden state (SDXL and SD3 read the penultimate one, so all are kept),
    plus the heads x tokens^2 attention scores. Layers are estimated as params / (12 D^2).
    """
    _check_batch(batch)
    peak = 0.0
    for component in facts.by_role("text_encoder"):
        d, tokens = component.hidden_size, _encoder_tokens(component)
        if d <= 0:
            continue
        layers = max(1, round(component.params / (12 * d * d)))
        heads = max(1, d // 64)
        peak = max(peak, tokens * d * (16 + layers + 1) + heads * tokens * tokens)
    return int(TEXT_FACTOR * batch * peak * dtype_bytes(dtype))


# --- Time ---------------------------------------------------------------------------------------


def transfer_seconds(nbytes: float, link_gbps: float) -> float:
    """Seconds to copy `nbytes` over a host<->device link of `link_gbps` GB/s (1e9 bytes/s, achieved)."""
    if link_gbps <= 0:
        raise ValueError(f"link_gbps={link_gbps} must be positive")
    return float(nbytes) / (link_gbps * 1e9)


@lru_cache(maxsize=1)
def time_model() -> dict:
    """`TIME_MODEL`, with what a calibration file fitted on a GPU replaces (read once, when first needed)."""
    if not CALIBRATION_FILE.is_file():
        return TIME_MODEL
    fitted = json.loads(CALIBRATION_FILE.read_text())
    return {key: ({**value, **fitted.get(key, {})} if isinstance(value, dict) else fitted.get(key, value))
            for key, value in TIME_MODEL.items()}


def architecture_kind(facts) -> str:
    """"unet" or "mmdit": the kinds whose kernels differ enough to reach different shares of the peak."""
    return "mmdit" if facts.denoiser_class == "SD3Transformer2DModel" else "unet"


def efficiency(device_class: str, kind: str) -> float:
    return time_model()["efficiency"][device_class][kind]


def step_seconds(flops: float, device_tflops: float, device_class: str, kind: str) -> float:
    """Seconds of one denoiser forward of `flops`: compute at the class's share of the peak, plus launches."""
    model = time_model()
    launches = model["launches_per_step"][kind] * model["launch_seconds"][device_class]
    return compute_seconds(flops, device_tflops, efficiency(device_class, kind)) + launches


def compute_seconds(flops: float, device_tflops: float, efficiency: float) -> float:
    """Seconds for `flops` on a device of `device_tflops` dense peak reaching `efficiency` of it."""
    if device_tflops <= 0:
        raise ValueError(f"device_tflops={device_tflops} must be positive")
    if not 0 < efficiency <= 1:
        raise ValueError(f"efficiency={efficiency} must be in (0, 1]")
    return float(flops) / (device_tflops * 1e12 * efficiency)

