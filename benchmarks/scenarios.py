"""The named scenarios of `benchmarks/harness.py`: one model, size, step count and seed each.

Both sides of a scenario do the same work: the same model (for `arch:` models the same random weights,
built from the same seed), resolution, steps, CFG scale, sampler (Euler: the scheduler the plain call
builds from the model's config), prompt and seed.

The CPU scenarios are small enough for CI; the CUDA ones are the speed anchors of
../shared/REFERENCE.md §7 (SD1.5 @512, SDXL @1024, SD3.5-medium @1024, 20 steps).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["SCENARIOS", "Scenario", "GROUPS"]

PROMPT = "a small red circle at the top left on a white background"


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str  # "tiny" (hayai's tiny SD1 pipeline, written to a temporary folder) or "arch:sd15" / "arch:sdxl" / "arch:sd35m"
    device: str  # "cpu" or "cuda"
    size: int  # width = height, pixels
    steps: int
    repeats: int  # warm runs per side after the first (cold) one; the medians are reported
    cfg_scale: float = 7.0
    seed: int = 0
    prompt: str = PROMPT
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("cpu-tiny", "tiny", "cpu", 256, 4, repeats=9,
             note="the tiny SD1 test pipeline: measures hayai's own per-call overhead, where it matters most"),
    Scenario("cpu-sd15", "arch:sd15", "cpu", 256, 2, repeats=2,
             note="the real SD1.5 architecture (random weights) at 256 px: minutes, not for every CI run"),
    Scenario("cuda-sd15", "arch:sd15", "cuda", 512, 20, repeats=5),
    Scenario("cuda-sdxl", "arch:sdxl", "cuda", 1024, 20, repeats=3),
    Scenario("cuda-sd35m", "arch:sd35m", "cuda", 1024, 20, repeats=3),
)}

GROUPS = {"cpu": ["cpu-tiny", "cpu-sd15"], "cuda": ["cuda-sd15", "cuda-sdxl", "cuda-sd35m"]}
