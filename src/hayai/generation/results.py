"""What a run hands back: progress events while it runs, images and facts when it ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hayai.generation.request import GenerationRequest
from hayai.generation.timing import MemoryReading
from hayai.models.families import Family

__all__ = ["ProgressEvent", "ProgressCallback", "GeneratedImage", "GenerationResult"]


@dataclass(frozen=True)
class ProgressEvent:
    phase: str  # "load", "plan" (before the first step), "denoise", "save"
    done: int
    total: int
    detail: str = ""
    seconds: float | None = None  # "plan": the predicted time of the whole run
    # "denoise": the step's latents, pictured on demand (`hayai.generation.preview.StepPreview`); read it
    # inside the callback, which runs before the next step
    preview: object = field(default=None, repr=False, compare=False)


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class GeneratedImage:
    path: Path | None  # None when the run was not saved
    seed: int
    index: int  # position in the run (0-based)
    infotext: str
    image: object = field(repr=False)  # PIL.Image.Image


@dataclass
class GenerationResult:
    run_id: int | None
    request: GenerationRequest  # resolved: concrete seed, sampler, size
    images: list[GeneratedImage]
    model: str
    model_hash: str
    family: Family
    device: str
    dtype: str
    timings: dict[str, float]
    peak_memory: MemoryReading
    placeholder: bool
    strategy: str = ""  # the execution strategy that finished the run
    plan_reason: str = ""
    events: list[dict] = field(default_factory=list)  # out-of-memory step-downs, in order
    warnings: list[str] = field(default_factory=list)
    loras: list[dict] = field(default_factory=list)  # the LoRAs in effect (hayai.lora.AppliedLora.to_dict)
    interrupted: bool = False  # stopped by a CancelToken: `images` are those finished before

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "request": self.request.to_dict(),
            "images": [{"path": str(i.path) if i.path else None, "seed": i.seed, "index": i.index} for i in self.images],
            "model": self.model,
            "model_hash": self.model_hash[:10],
            "family": self.family.value,
            "device": self.device,
            "dtype": self.dtype,
            "strategy": self.strategy,
            "plan_reason": self.plan_reason,
            "events": self.events,
            "loras": self.loras,
            "timings": self.timings,
            "peak_memory_bytes": self.peak_memory.peak_bytes,
            "peak_memory_kind": self.peak_memory.kind,
            "placeholder": self.placeholder,
            "warnings": self.warnings,
            "interrupted": self.interrupted,
        }
