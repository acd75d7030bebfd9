"""Per-phase wall time and peak memory of a run.

Phases are measured around the real work without changing it: text encoding by forward hooks on the
pipeline's text encoders, denoising up to the last step's callback, VAE decoding from there to the end
of the pipeline call. On CUDA the clock waits for the device before each reading, so a phase is not
charged for work queued by the one before.

Peak memory is the CUDA allocator's peak on a GPU, and the process's peak resident set on a CPU
(Linux lets a process reset that mark through /proc/self/clear_refs, so it is per run there; elsewhere
it is the peak since the process started, and says so).
"""

from __future__ import annotations

import re
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["PHASES", "PhaseTimer", "PeakMemory", "MemoryReading"]

PHASES = ("load", "text_encode", "vae_encode", "denoise", "vae_decode", "upscale", "save")


class PhaseTimer:
    """Accumulates seconds per phase; `sync` is called before every clock reading (CUDA sync)."""

    def __init__(self, sync=None) -> None:
        self._sync = sync or (lambda: None)
        self.seconds: dict[str, float] = defaultdict(float)

    def now(self) -> float:
        self._sync()
        return time.perf_counter()

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds

    @contextmanager
    def phase(self, name: str):
        start = self.now()
        try:
            yield
        finally:
            self.add(name, self.now() - start)

    @contextmanager
    def hooked(self, modules, phase: str):
        """Charge every forward pass of `modules` to `phase` while the block runs."""
        starts: list[float] = []

        def before(_module, _args):
            starts.append(self.now())

        def after(_module, _args, _output):
            self.add(phase, self.now() - starts.pop())

        handles = []
        for module in modules:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def as_dict(self) -> dict[str, float]:
        return {name: round(self.seconds[name], 6) for name in PHASES if name in self.seconds}


@dataclass(frozen=True)
class MemoryReading:
    peak_bytes: int | None
    kind: str  # "cuda_allocated", "process_rss" (per run) or "process_rss_lifetime"


class PeakMemory:
    """Resets the peak mark at the start of a run and reads it at the end."""

    def __init__(self, device) -> None:
        self.device = device
        self._per_run = False  # whether reset() managed to clear the CPU peak mark

    def _cuda(self) -> bool:
        return getattr(self.device, "type", str(self.device)) == "cuda"

    def reset(self) -> None:
        if self._cuda():
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        elif sys.platform.startswith("linux"):
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # "5" resets the peak RSS (VmHWM) of this process
                self._per_run = True
            except OSError:
                self._per_run = False  # a locked-down kernel: the reading says it is the lifetime peak

    def read(self) -> MemoryReading:
        if self._cuda():
            import torch

            return MemoryReading(int(torch.cuda.max_memory_allocated(self.device)), "cuda_allocated")
        if sys.platform.startswith("linux"):
            status = open("/proc/self/status").read()
            match = re.search(r"VmHWM:\s+(\d+) kB", status)
            if match:
                kind = "process_rss" if self._per_run else "process_rss_lifetime"
                return MemoryReading(int(match.group(1)) * 1024, kind)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
        return MemoryReading(peak * scale, "process_rss_lifetime")
