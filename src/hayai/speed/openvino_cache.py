"""The OpenVINO conversion cache, `$HAYAI_HOME/cache/openvino/<model sha256>-<W>x<H>/`, kept under a cap.

Each folder holds one conversion (`hayai.speed.openvino.convert`): the UNet's float32 weights for one model at
one size, and `conversion.json`, its record. After a new conversion is saved, `evict` removes the least recently
used others until the conversions total at most `$HAYAI_OPENVINO_CACHE_GB` GiB, never the new one or one a UNet in
this process runs on. A folder still being written (`<name>.partial-<pid>`, or one a crash left) is listed and
cleared, but neither counted against the cap nor evicted: it may be another process's conversion under way.
How long each model took to convert is also kept in `timings.json` beside the folders, which neither eviction
nor clearing removes: the pay-back rule still knows what converting a model again would cost.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from hayai import paths
from hayai.errors import RequestError
from hayai.files import replace_json, size_bytes
from hayai.hardware import GIB

__all__ = ["CAP_VARIABLE", "DEFAULT_CAP_GB", "Entry", "Usage", "cap_bytes", "cap_or_problem", "clear", "entries", "evict",
           "eviction_warning", "now", "remember_conversion", "remembered_conversion", "root", "touch", "usage"]

CAP_VARIABLE = "HAYAI_OPENVINO_CACHE_GB"
# A conversion is the UNet's weights in float32. SD1.5's took 3.4 GB per size, measured on this project's CPU
# (860M parameters x 4 bytes: 3.2 GiB), so 16 GiB holds four SD1.5 sizes. SDXL's UNet, 2.57B parameters (its
# published count, `models.architectures.PUBLISHED_PARAMS`), comes to 9.6 GiB by the same arithmetic, not measured
# here: one SDXL size and one or two SD1.5 ones.
DEFAULT_CAP_GB = 16.0
RECORD = "conversion.json"
_NAME = re.compile(r"(?P<hash>.+)-(?P<width>\d+)x(?P<height>\d+)(?P<partial>\.partial-\d+)?")


def root() -> Path:
    return paths.cache_dir() / "openvino"


def now() -> str:
    """A timestamp as the records keep them (UTC, to the second, so they sort as text)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def cap_bytes() -> float:
    """The cap in bytes: `$HAYAI_OPENVINO_CACHE_GB` GiB, else `DEFAULT_CAP_GB`; a RequestError for a value that
    is not a size."""
    text = os.environ.get(CAP_VARIABLE, "").strip()
    if not text:
        return DEFAULT_CAP_GB * GIB
    try:
        gib = float(text)
    except ValueError:
        gib = math.nan
    if not math.isfinite(gib) or gib < 0:
        raise RequestError(f"{CAP_VARIABLE}={text!r} is not a size in GiB; set a number of GiB, e.g. "
                           f"{CAP_VARIABLE}=16 (0 keeps only the conversion in use)")
    return gib * GIB


def cap_or_problem() -> tuple[float | None, str | None]:
    """`cap_bytes()`, or None and why not (for reports, which go on where a run would stop)."""
    try:
        return cap_bytes(), None
    except RequestError as error:
        return None, str(error)


@dataclass(frozen=True)
class Entry:
    """One folder of the cache: a conversion, or one still being written (`converted_at` None)."""

    folder: Path
    model_hash: str
    width: int
    height: int
    bytes: int
    converted_at: str | None
    last_used: str | None  # the conversion itself counts as a use

    @property
    def unfinished(self) -> bool:
        return self.converted_at is None

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "model_hash": self.model_hash, "width": self.width, "height": self.height,
                "bytes": self.bytes, "converted_at": self.converted_at, "last_used": self.last_used,
                "unfinished": self.unfinished}


def entries() -> list[Entry]:
    """Every folder hayai made under `root()`, least recently used first (unfinished ones last)."""
    found = []
    for folder in sorted(root().iterdir()) if root().is_dir() else ():
        match = _NAME.fullmatch(folder.name)
        if not folder.is_dir() or match is None:
            continue
        record_path = folder / RECORD
        record = json.loads(record_path.read_text()) if not match["partial"] and record_path.is_file() else {}
        converted = record.get("converted_at")
        found.append(Entry(folder, match["hash"], int(match["width"]), int(match["height"]), size_bytes(folder),
                           converted, record.get("last_used", converted)))
    return sorted(found, key=lambda e: (e.unfinished, e.last_used or ""))


def _timings() -> Path:
    return root() / "timings.json"


def remember_conversion(model_hash: str, seconds: float) -> None:
    """Keep how long converting this model took, past the eviction of its folders (replaced whole, atomically)."""
    path = _timings()
    timings = json.loads(path.read_text()) if path.is_file() else {}
    timings[model_hash] = {"seconds": seconds, "converted_at": now()}
    replace_json(path, timings, indent=2)


def remembered_conversion(model_hash: str) -> float | None:
    """The conversion time `remember_conversion` kept for this model, or None."""
    path = _timings()
    entry = json.loads(path.read_text()).get(model_hash) if path.is_file() else None
    return entry["seconds"] if entry else None


def touch(folder: Path) -> None:
    """Record that the conversion in `folder` was loaded for a run now.

    The time is a field of conversion.json rather than the file's mtime: the listing shows it beside
    `converted_at`, and it survives a copy or restore of the cache that does not keep file times. The record
    is replaced whole (`hayai.files.replace_json`), so a process reading it at the same time sees the old
    record or the new, never half of one.
    """
    path = folder / RECORD
    record = json.loads(path.read_text())
    record["last_used"] = now()
    replace_json(path, record, indent=2)


def evict(cap: float, keep: set[Path]) -> list[Entry]:
    """Remove the least recently used conversions, other than those in `keep` (the one just converted, those
    in use), until the conversions total at most `cap` bytes; returns what was removed. Where `keep` alone is
    over the cap, everything else goes and the cap is left exceeded."""
    finished = [e for e in entries() if not e.unfinished]
    total = sum(e.bytes for e in finished)
    removed = []
    for entry in finished:
        if total <= cap:
            break
        if entry.folder in keep:
            continue
        shutil.rmtree(entry.folder, ignore_errors=True)  # (another process may have removed it first)
        total -= entry.bytes
        removed.append(entry)
    return removed


def clear() -> list[Entry]:
    """Remove every folder of the cache, unfinished ones too; returns what was removed."""
    removed = entries()
    for entry in removed:
        shutil.rmtree(entry.folder, ignore_errors=True)
    return removed


def eviction_warning(event: dict) -> str:
    """What to tell the user of the conversions an `openvino.attach` event says it evicted."""
    removed = ", ".join(f"{e['folder']} ({e['bytes'] / GIB:.1f} GiB)" for e in event["evicted"])
    freed = sum(e["bytes"] for e in event["evicted"]) / GIB
    return (f"the OpenVINO cache went over its cap of {event['cache_cap_gb']:g} GiB ({CAP_VARIABLE}): removed the "
            f"least recently used conversion(s) {removed}, {freed:.1f} GiB freed; they are converted again when a "
            "run needs them")


@dataclass(frozen=True)
class Usage:
    """What `hayai doctor` says of the cache."""

    folder: Path
    conversions: int
    bytes: int
    cap_bytes: float | None  # None: `cap_problem` says why
    cap_problem: str | None = None


def usage() -> Usage | None:
    """The cache's size and cap, or None where it holds nothing."""
    found = entries()
    if not found:
        return None
    return Usage(root(), sum(not e.unfinished for e in found), sum(e.bytes for e in found), *cap_or_problem())
