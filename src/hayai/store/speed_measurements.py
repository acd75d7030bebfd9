"""Speed levers as measured here (`hayai bench speed`): one row per lever of a bench run, never updated.

`nearest` picks what `hayai plan` shows and the engine goes by: for a model on a device, the latest
measurement of each lever at the size nearest to the one asked for (then the nearest step count).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from dataclasses import dataclass, field

__all__ = ["SpeedMeasurement", "record", "for_model", "nearest"]


@dataclass(frozen=True)
class SpeedMeasurement:
    model: str  # the name it was measured as
    model_hash: str  # hayai.models.catalog.source_hash (an arch:* model: a hash of its name)
    family: str
    width: int
    height: int
    steps: int  # the exact run's
    device_key: str  # hayai.hardware.DeviceSpec.key
    threads: int  # torch CPU threads
    lever: str  # "exact" or "FIELD=VALUE+FIELD=VALUE"
    request: dict  # the knobs it ran with (speed, step cache, ..., sampler, steps)
    repeats: int
    denoise_ratio: float  # median over rounds of its time / the exact run's time (< 1: faster)
    end_to_end_ratio: float
    denoise_seconds: float  # medians
    end_to_end_seconds: float
    adherence_points: float | None  # mean adherence in percent (the demo model only)
    psnr_db: float | None  # mean distance to the exact run's images (inf: identical); None: not measured
    ssim: float | None
    hayai_version: str
    torch_version: str
    # seconds a lever costs once, before its timed rounds (`compile`: the first call, which compiles; timed
    # in the bench's untimed warm-up, less a timed run); None: it has none, or it was not measured
    one_off_seconds: float | None = None
    measured_at: str = ""  # UTC ISO 8601, stamped when stored; the same for every lever of one bench run
    id: int | None = field(default=None, compare=False)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def to_dict(self) -> dict:
        """JSON-safe: PSNR of identical images (inf) is None with `identical` true."""
        data = dataclasses.asdict(self)
        data["identical"] = self.psnr_db is not None and math.isinf(self.psnr_db)
        if data["identical"]:
            data["psnr_db"] = None
        return data


_COLUMNS = [f.name for f in dataclasses.fields(SpeedMeasurement) if f.name != "id"]


def record(conn: sqlite3.Connection, rows: list[SpeedMeasurement], *, now: str) -> list[SpeedMeasurement]:
    """Keep `rows` (one bench run) under one timestamp, in one transaction; returns them as stored."""
    stamped = [dataclasses.replace(row, measured_at=now) for row in rows]
    conn.execute("BEGIN")
    try:
        for row in stamped:
            values = [json.dumps(row.request) if name == "request" else getattr(row, name)
                      for name in _COLUMNS]
            conn.execute(f"INSERT INTO speed_measurements ({', '.join(_COLUMNS)}) "
                         f"VALUES ({', '.join('?' * len(_COLUMNS))})", values)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return stamped


def for_model(conn: sqlite3.Connection, model_hash: str, device_key: str) -> list[SpeedMeasurement]:
    """Every measurement of a model on a device, newest first."""
    cursor = conn.execute(f"SELECT id, {', '.join(_COLUMNS)} FROM speed_measurements WHERE model_hash = ? "
                          "AND device_key = ? ORDER BY measured_at DESC, id", (model_hash, device_key))
    return [_row(values) for values in cursor.fetchall()]


def _row(values) -> SpeedMeasurement:
    data = dict(zip(["id", *_COLUMNS], values))
    data["request"] = json.loads(data["request"])
    return SpeedMeasurement(**data)


def nearest(measurements: list[SpeedMeasurement], width: int, height: int, steps: int) -> list[SpeedMeasurement]:
    """The latest measurement of each lever at the size nearest to `width` x `height` (by pixel count, then
    by aspect), then at the step count nearest to `steps`; `exact` first, then in the order measured."""
    if not measurements:
        return []

    def size_gap(m):
        return abs(math.log(m.width * m.height / (width * height))), abs(math.log(m.width / m.height * height / width))

    best = min(size_gap(m) for m in measurements)
    at_size = [m for m in measurements if size_gap(m) == best]
    fewest = min(abs(m.steps - steps) for m in at_size)
    at_steps = [m for m in at_size if abs(m.steps - steps) == fewest]
    if len({m.steps for m in at_steps}) > 1:  # as far above as below: the more steps, the closer to a real run
        most = max(m.steps for m in at_steps)
        at_steps = [m for m in at_steps if m.steps == most]
    latest: dict[str, SpeedMeasurement] = {}
    for m in sorted(at_steps, key=lambda m: (m.measured_at, m.id or 0), reverse=True):
        latest.setdefault(m.lever, m)
    return sorted(latest.values(), key=lambda m: (m.lever != "exact", m.id or 0))
