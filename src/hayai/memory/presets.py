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


def suggest(device: DeviceSpec, family: Family, preset: str = "balanced", *, native: int | None = None) -> Suggestion:
    """The preset's settings for `device`; sizes stay near `native`, the model's own side (default: its
    family's: a model trained at 64 px, like the built-in demo, draws noise at 512)."""
    if preset not in PRESETS:
        raise RequestError(f"preset={preset!r} must be one of: {', '.join(PRESETS)}")
    memory = device.total_bytes / GIB if device.accelerator else 0.0  # a CPU is the entry tier whatever its RAM
    tier, _, batches, sides, steps = next(t for t in _TIERS if memory >= t[1])
    pick = {"speed": 0.0, "balanced": 0.5, "quality": 1.0}[preset]
    native = native or FAMILY_INFO[family].native_size
    side = sides[0] + (sides[1] - sides[0]) * pick
    small = 1.5 * native < _TIERS[-1][3][0]  # a model trained below every tier (a 64 px demo) stays at its size
    side = native if small else min(max(side, 0.75 * native), 1.5 * native)
    grid = 64 if native >= 256 else 8  # a 64 px grid suits every family's VAE and patch size; tiny models: 8
    side = max(int(side) - int(side) % grid, grid)
    return Suggestion(
        preset=preset, tier=tier, batch_size=round(batches[0] + (batches[1] - batches[0]) * pick),
        width=side, height=side, steps=round(steps[0] + (steps[1] - steps[0]) * pick), allow_lossy=preset == "speed",
    )
