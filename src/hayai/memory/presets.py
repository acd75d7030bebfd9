"""Named presets on top of the planner: seed 000's three tiers of settings, by available memory.

Seed 000 sorts machines into tiers (entry: batch 1, 512-768 px, 20-30 steps, low-VRAM mode; middle:
batch 2-4, 768-1024 px, 30-50 steps; high-end: batch 4-8, 1024 px and up, 50-100 steps). hayai keeps the
tiers' pixel ranges but keeps them within 0.75x..1.5x of the model family's native size (an SDXL model at
512 px looks broken, an SD1.5 model at 1024 px repeats itself), and lets the preset pick within the
tier: "speed" the low end, "quality" the high end, "balanced" the middle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hayai.errors import RequestError
from hayai.hardware import GIB, DeviceSpec
from hayai.models.families import FAMILY_INFO, Family

__all__ = ["PRESETS", "Suggestion", "suggest"]

PRESETS = ("speed", "balanced", "quality")

# (tier, min memory GiB, batch range, side range px, steps range) from seed 000 ("1024+" taken as 1024-1280).
_TIERS = (
    ("high-end", 12.0, (4, 8), (1024, 1280), (50, 100)),
    ("middle", 8.0, (2, 4), (768, 1024), (30, 50)),
    ("entry", 0.0, (1, 1), (512, 768), (20, 30)),
)


@dataclass(frozen=True)
class Suggestion:
    preset: str
    tier: str
    batch_size: int
    width: int
    height: int
    steps: int
    allow_lossy: bool  # "speed" accepts fp8 storage when it is faster

    def to_dict(self) -> dict:
        return asdict(self)


def suggest(device: DeviceSpec, family: Family, preset: str = "balanced") -> Suggestion:
    if preset not in PRESETS:
        raise RequestError(f"preset={preset!r} must be one of: {', '.join(PRESETS)}")
    memory = device.total_bytes / GIB if device.accelerator else 0.0  # a CPU is the entry tier whatever its RAM
    tier, _, batches, sides, steps = next(t for t in _TIERS if memory >= t[1])
    pick = {"speed": 0.0, "balanced": 0.5, "quality": 1.0}[preset]
    info = FAMILY_INFO[family]
    side = sides[0] + (sides[1] - sides[0]) * pick
    side = min(max(side, 0.75 * info.native_size), 1.5 * info.native_size)
    side = int(side) - int(side) % 64  # sizes on a 64 px grid suit every family's VAE and patch size
    return Suggestion(
        preset=preset, tier=tier, batch_size=round(batches[0] + (batches[1] - batches[0]) * pick),
        width=side, height=side, steps=round(steps[0] + (steps[1] - steps[0]) * pick), allow_lossy=preset == "speed",
    )
