"""Execution strategies: every way hayai knows to run a pipeline, as plain data.

A `Strategy` is a set of switches (where the weights live, in which dtype, how the VAE decodes, whether
the denoiser's batch is split). `candidates(device, facts)` lists the ones that make sense for a device,
from fastest to leanest (the order the out-of-memory recovery steps down in):

    resident -> VAE tiling/slicing -> CFG and batch split -> text encoders streamed in for encoding, or
    run on the CPU -> model offload
    -> group offload (CUDA streams) -> fp8 storage with layerwise casting -> sequential offload -> CPU

Attention slicing is added only where no fused attention kernel exists: with SDPA it slows things down
(diffusers' docs) and saves nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = ["Strategy", "PLACEMENTS", "IN_A1111_WORDS", "VAE_TILE_PX", "candidates"]

# Tiled VAE decoding works on tiles of this many pixels. diffusers' default tile is the VAE's sample_size,
# 1024 px for SDXL and SD3, so a 1024 px image would not be tiled at all; 512 px tiles (with diffusers'
# 25% overlap) bound the decoder's activations to those of a 512 px image.
VAE_TILE_PX = 512

# Where the weights live while a run executes.
PLACEMENTS = (
    "resident",  # everything on the accelerator
    "te_offload",  # text encoders kept in host RAM and streamed in layer by layer to encode; the rest resident
    "te_cpu",  # text encoders run on the CPU; denoiser and VAE resident
    "model_offload",  # whole components move to the accelerator when used (diffusers enable_model_cpu_offload)
    "group_offload",  # blocks stream in ahead of use on a side CUDA stream (diffusers enable_group_offload)
    "sequential_offload",  # every layer streams in when called (diffusers enable_sequential_cpu_offload)
    "cpu",  # no accelerator
)

# Each placement and switch as an A1111 user knows it (the nearest command-line flag or setting).
IN_A1111_WORDS = {
    "resident": "everything on the GPU: A1111 with no memory flag",
    "te_offload": "text encoders wait in RAM and stream in to encode each prompt; the rest stays on the GPU "
                  "(no A1111 flag: a lighter --medvram)",
    "te_cpu": "text encoders run on the CPU; the rest stays on the GPU",
    "model_offload": "one model (text encoder, UNet, VAE) on the GPU at a time: ~ A1111 --medvram",
    "group_offload": "the UNet's blocks stream in just ahead of use (no A1111 flag; between --medvram and --lowvram)",
    "sequential_offload": "every layer moves to the GPU when called: ~ A1111 --lowvram",
    "cpu": "all on the CPU, in float32: ~ A1111 --use-cpu all --no-half",
    "vae-tiling": "the VAE decodes in tiles: ~ A1111's Tiled VAE",
    "split": "the CFG halves and batch items go through the UNet one at a time",
    "fp8": "UNet weights stored in fp8: ~ A1111's 'FP8 weight' setting (pixels change slightly)",
    "float32": "float32 on a GPU: ~ A1111 --no-half",
}


@dataclass(frozen=True)
class Strategy:
    placement: str = "resident"
    device: str = "cuda"  # torch device the denoiser computes on
    dtype: str = "float16"  # compute dtype
    vae_tiling: bool = False  # decode in tiles (and one image at a time)
    split_batch: bool = False  # run the denoiser on one sample at a time (CFG halves and batch items)
    fp8_storage: bool = False  # denoiser weights stored in float8, cast per layer (changes pixels slightly)
    attention_slicing: bool = False  # only without a fused attention kernel

    @property
    def name(self) -> str:
        parts = [self.placement if self.placement != "cpu" else f"cpu-{self.dtype}"]
        parts += [flag for flag, on in (("vae-tiling", self.vae_tiling), ("split", self.split_batch),
                                        ("fp8", self.fp8_storage), ("attn-slicing", self.attention_slicing)) if on]
        return "+".join(parts)

    @property
    def lossless(self) -> bool:
        """Whether the images are those of the plain resident run (up to float rounding)."""
        return not self.fp8_storage

    def to_dict(self) -> dict:
        return {**asdict(self), "name": self.name}

    @classmethod
    def from_dict(cls, data: dict) -> Strategy:
        return cls(**{k: v for k, v in data.items() if k != "name"})


def _variants(strategy: Strategy) -> list[Strategy]:
    """A placement as is, then with VAE tiling, then also with the denoiser batch split."""
    tiled = replace(strategy, vae_tiling=True)
    return [strategy, tiled, replace(tiled, split_batch=True)]


def candidates(device, *, dtype: str | None = None) -> list[Strategy]:
    """The strategies worth considering on `device` (a `DeviceSpec`), fastest and hungriest first.

    Each placement comes plain, with VAE tiling, and with tiling and the batch split, so the planner can
    take exactly the savings it needs; the out-of-memory ladder walks the list in this order.
    """
    if not device.accelerator:
        return _variants(Strategy(placement="cpu", device="cpu", dtype=dtype or "float32"))
    base = Strategy(device=device.torch_device, dtype=dtype or device.half_dtype, attention_slicing=not device.sdpa)
    placements = [("resident", False), ("te_offload", False), ("te_cpu", False), ("model_offload", False),
                  ("group_offload", False), ("te_offload", True), ("te_cpu", True), ("model_offload", True),
                  ("sequential_offload", False)]
    if device.kind == "mps":  # accelerate's offload hooks and diffusers' group offload streams are CUDA-first
        placements = [p for p in placements if p[0] in ("resident", "te_cpu")]
    ladder = [v for placement, fp8 in placements for v in _variants(replace(base, placement=placement, fp8_storage=fp8))]
    return ladder + [Strategy(placement="cpu", device="cpu", dtype="float32", vae_tiling=True)]
