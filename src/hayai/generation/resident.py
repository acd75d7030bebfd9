"""The models an engine keeps in memory: least recently used evicted first, by bytes.

A request naming a model seen before reuses it instead of loading it again. Two budgets:
- host RAM, `budget_bytes`: the weights of every resident model together, wherever they are now (each
  comes back to host RAM when it stops being active). Before a load, least recently used models are
  evicted until the new one's expected bytes fit; after it, its measured bytes. 0 keeps only the
  active model (a model is always kept while active, whatever its size).
- the accelerator: only the active model is placed on it, and the planner plans it against the whole
  device. When another model becomes active the one before is parked (`park`): moved back to host RAM,
  or evicted when its placement cannot be undone (offload hooks, fp8 storage).
A model in use by a running request (`in_use`) is never evicted. Evicting drops every reference the
cache holds (`drop`) and frees the memory.

Generation runs on one thread at a time; listing and unloading may come from any thread, so the
structure is guarded by a lock (held only for bookkeeping, never while loading or freeing).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

__all__ = ["ResidentModels", "weights_bytes", "expected_bytes", "DEFAULT_FRACTION"]

# The host budget when none is given: this share of the memory available when the engine starts.
DEFAULT_FRACTION = 0.5


def weights_bytes(pipe) -> int:
    """Bytes of a pipeline's parameters and buffers, each tensor counted once (none on the meta device)."""
    import torch

    seen: set[int] = set()
    total = 0
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for tensor in (*module.parameters(), *module.buffers()):
                if id(tensor) not in seen and tensor.device.type != "meta":
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
    return total


def expected_bytes(source, dtype: str) -> int:
    """What loading `source` in `dtype` will take, before loading it: the parameter counts of its configs
    (folders, architectures) or the size of its file (single files)."""
    from hayai.memory.costs import weight_bytes
    from hayai.memory.facts import facts_for_source

    if source.kind == "single_file":
        return source.path.stat().st_size
    facts, _ = facts_for_source(source)
    return weight_bytes(sum(c.params + c.buffers for c in facts.components), dtype)


@dataclass
class _Entry:
    loaded: object  # hayai.generation.engine.LoadedModel
    bytes: int
    last_used: float  # time.time() of the last load or use
    users: int = 0  # running requests using it


class ResidentModels:
    """An LRU of loaded models keyed by their `ModelSource`.

    `park(loaded) -> bool` leaves the accelerator (False: it could not, evict it); `drop(loaded)` lets go
    of its pipeline and frees its memory; `measure(loaded) -> int` is its bytes now.
    """

    def __init__(self, budget_bytes: int, *, park: Callable[[object], bool], drop: Callable[[object], None],
                 measure: Callable[[object], int]):
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes={budget_bytes} must be >= 0 (0 keeps only the active model)")
        self.budget_bytes = budget_bytes
        self._park, self._drop, self._measure = park, drop, measure
        self._entries: OrderedDict[object, _Entry] = OrderedDict()  # least recently used first
        self._active = None  # the source of the model placed for running
        self._lock = threading.RLock()

    # -- the engine's side -------------------------------------------------------------------------
    def get(self, source):
        """The resident model of `source`, now the most recently used (None if not resident)."""
        with self._lock:
            entry = self._entries.get(source)
            if entry is None:
                return None
            entry.last_used = time.time()
            self._entries.move_to_end(source)
            return entry.loaded

    def make_room(self, expected: Callable[[], int]) -> None:
        """Evict least recently used models until one of `expected()` bytes more fits (called before a
        load, so the next model is built in the room the evicted ones leave)."""
        with self._lock:
            if not any(entry.users == 0 for entry in self._entries.values()):
                return
        needed = expected() if self.budget_bytes else 0  # (reading configs: not under the lock)
        self._evict(lambda used: used + needed > self.budget_bytes)

    def add(self, loaded) -> None:
        """Keep a freshly loaded model, then evict others until the budget holds."""
        with self._lock:
            self._entries[loaded.source] = _Entry(loaded, self._measure(loaded), time.time())
        self._evict(lambda used: used > self.budget_bytes, keep=loaded.source)

    def activate(self, loaded) -> None:
        """Make `loaded` the model placed for running: the one active before is parked (or evicted)."""
        with self._lock:
            before = self._entries.get(self._active) if self._active != loaded.source else None
            self._active = loaded.source
        if before is None:
            return
        if self._park(before.loaded):
            with self._lock:
                before.bytes = self._measure(before.loaded)
        else:
            self._remove([before.loaded.source])

    @contextmanager
    def in_use(self, loaded):
        """Keep `loaded` from eviction while a request runs; its bytes are measured again after (a
        placement may have materialised or cast its weights) and the budget enforced."""
        with self._lock:
            entry = self._entries.get(loaded.source)
            if entry is not None:
                entry.users += 1
        try:
            yield loaded
        finally:
            if entry is not None:
                with self._lock:
                    entry.users -= 1
                    entry.bytes = self._measure(loaded)
                    entry.last_used = time.time()
                self._evict(lambda used: used > self.budget_bytes, keep=loaded.source)

    # -- anyone's side -----------------------------------------------------------------------------
    def listing(self) -> list[dict]:
        """What is resident, most recently used first: name, bytes, last used (Unix time), active, in use."""
        with self._lock:
            return [{"name": source.name, "path": str(source.path), "bytes": entry.bytes, "last_used": entry.last_used,
                     "active": source == self._active, "in_use": entry.users > 0,
                     "strategy": entry.loaded.strategy.name if entry.loaded.strategy else None}
                    for source, entry in reversed(self._entries.items())]

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(entry.bytes for entry in self._entries.values())

    def unload_all(self) -> list[str]:
        """Evict every model not in use by a running request; returns the names evicted."""
        return self._evict(lambda used: True)

    # -- eviction ----------------------------------------------------------------------------------
    def _evict(self, over: Callable[[int], bool], keep=None) -> list[str]:
        """Evict least recently used models (never `keep` or one in use) while `over(used bytes)`."""
        with self._lock:
            used = self.used_bytes
            chosen = []
            for source, entry in self._entries.items():
                if not over(used):
                    break
                if source != keep and entry.users == 0:
                    chosen.append(source)
                    used -= entry.bytes
        return self._remove(chosen)

    def _remove(self, sources: list) -> list[str]:
        with self._lock:
            gone = [self._entries.pop(source) for source in sources if source in self._entries]
            if self._active in sources:
                self._active = None
        for entry in gone:  # outside the lock: freeing memory takes a while
            self._drop(entry.loaded)
        return [entry.loaded.source.name for entry in gone]
