"""Preparing a dataset for training: aspect buckets, resize and crop, a train/validation split, a manifest.

- Buckets (kohya-ss `make_bucket_resolutions`): every (width, height) whose sides are multiples of the
  model's step, between half and twice the resolution, with an area of at most resolution²; each image
  goes to the bucket closest to its aspect ratio, is resized to cover it and centre-cropped. Without
  buckets every image is centre-cropped to a square of the resolution.
- Split: images with the same bytes stay together; groups are shuffled with the seed and the first
  ones, up to `validation_fraction` of the images, are held out (at least one when there are 4 or more).
- Output: `images/NNNNN.png` with the caption beside it as `NNNNN.txt` (so kohya's scripts read the
  folder too), and `manifest.json` listing every item (file, caption, split, bucket, original size,
  crop, repeats, source) and every skipped source file with why. The source folder is only read.

Preparing again with the same parameters and the same source files finds the manifest and reuses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hayai.dataset.check import check_dataset, fallback_caption
from hayai.dataset.scan import DatasetScan, ImageRecord
from hayai.errors import RequestError

__all__ = [
    "MANIFEST",
    "Manifest",
    "ManifestItem",
    "choose_bucket",
    "crop_box",
    "load_manifest",
    "make_buckets",
    "prepare_dataset",
    "split_items",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ManifestItem:
    file: str  # the prepared image, relative to the manifest's folder
    caption: str  # the caption it trains with (trigger word and stand-ins applied)
    split: str  # "train" or "validation"
    width: int  # its bucket
    height: int
    original_size: tuple[int, int]  # (width, height) of the source image
    crop: tuple[int, int]  # (left, top) of the crop, in pixels of the resized image
    repeats: int  # kohya `N_name` repeats per epoch
    source: str  # the source image, relative to the source folder
    sha256: str  # of the source file
    note: str | None = None  # e.g. "no caption: trains with 'name'"


@dataclass
class Manifest:
    folder: Path  # where manifest.json and the images are
    source: str
    resolution: int
    bucket_step: int
    buckets: bool
    validation_fraction: float
    seed: int
    trigger_word: str | None
    items: list[ManifestItem]
    skipped: list[dict] = field(default_factory=list)  # {"source", "reason"}
    findings: list[dict] = field(default_factory=list)  # the dataset doctor's findings when it was made
    key: str = ""  # hash of the parameters and the source files: equal keys, equal manifests

    def split(self, name: str) -> list[ManifestItem]:
        return [item for item in self.items if item.split == name]

    def to_dict(self) -> dict:
        return {
            "hayai_dataset": FORMAT_VERSION, "source": self.source, "resolution": self.resolution,
            "bucket_step": self.bucket_step, "buckets": self.buckets, "validation_fraction": self.validation_fraction,
            "seed": self.seed, "trigger_word": self.trigger_word, "key": self.key,
            "items": [asdict(item) for item in self.items], "skipped": self.skipped, "findings": self.findings,
        }


# -- buckets (pure) ----------------------------------------------------------------------------
def make_buckets(resolution: int, step: int) -> list[tuple[int, int]]:
    """(width, height) buckets: sides multiples of `step` in [resolution/2, 2*resolution], area <= resolution²."""
    if resolution < step or resolution % step:
        raise RequestError(f"resolution={resolution} must be a positive multiple of {step} for this model")
    area = resolution * resolution
    low = max(step, (resolution // 2) // step * step)
    high = 2 * resolution
    buckets = {(resolution, resolution)}
    width = low
    while width <= high:
        height = min(high, (area // width) // step * step)
        if height >= low:
            buckets.update({(width, height), (height, width)})
        width += step
    return sorted(buckets)


def choose_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket nearest the image's aspect ratio (in log ratio; the larger area wins a tie)."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def crop_box(width: int, height: int, bucket: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resized width, height), (left, top)): scale to cover the bucket, then centre-crop."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    rw, rh = max(bw, round(width * scale)), max(bh, round(height * scale))
    return (rw, rh), ((rw - bw) // 2, (rh - bh) // 2)


def split_items(images: list[ImageRecord], validation_fraction: float, seed: int) -> set[str]:
    """The relative paths held out for validation (pure, deterministic for a seed)."""
    import numpy as np

    if not 0.0 <= validation_fraction < 1.0:
        raise RequestError(f"validation_fraction={validation_fraction} must be at least 0 and below 1")
    if validation_fraction == 0 or len(images) < 4:
        return set()
    wanted = max(1, round(len(images) * validation_fraction))
    groups: dict[str, list[str]] = {}
    for image in sorted(images, key=lambda i: i.relative):
        groups.setdefault(image.sha256, []).append(image.relative)
    ordered = list(groups.values())
    held: set[str] = set()
    for index in np.random.default_rng(seed).permutation(len(ordered)):
        if len(held) >= wanted:
            break
        if len(held) + len(ordered[index]) < len(images):  # never hold out everything
            held.update(ordered[index])
    return held


# -- the manifest ------------------------------------------------------------------------------
def _key(scan: DatasetScan, params: dict) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for image in scan.images:
        digest.update(f"{image.relative}\0{image.sha256}\0{image.caption}\0{image.error is None}\n".encode())
    return digest.hexdigest()[:16]


def load_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"{path} cannot be read as a hayai dataset manifest ({exc})") from None
    if data.get("hayai_dataset") != FORMAT_VERSION:
        raise RequestError(f"{path} is not a hayai dataset manifest (version {data.get('hayai_dataset')!r})")
    items = [ManifestItem(**{**item, "original_size": tuple(item["original_size"]), "crop": tuple(item["crop"])})
             for item in data["items"]]
    return Manifest(
        Path(folder).resolve(), data["source"], data["resolution"], data["bucket_step"], data["buckets"],
        data["validation_fraction"], data["seed"], data.get("trigger_word"), items, data.get("skipped", []),
        data.get("findings", []), data.get("key", ""),
    )


def _caption(image: ImageRecord, trigger_word: str | None) -> tuple[str, str | None]:
    if image.caption is None:
        text = fallback_caption(image, trigger_word)
        return text, f"no caption: trains with {text!r}" if text else "no caption: trains unconditioned"
    caption = image.caption.strip()
    if trigger_word and trigger_word.lower() not in caption.lower():
        return (f"{trigger_word}, {caption}" if caption else trigger_word), None
    return caption, None


def _write_image(source: Path, target: Path, bucket: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    from PIL import Image

    with Image.open(source) as image:
        image.load()
        original = image.size
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))  # transparency becomes white, not black
        else:
            image = image.convert("RGB")
        resized, (left, top) = crop_box(*original, bucket)
        if resized != original:
            image = image.resize(resized, Image.Resampling.LANCZOS)
        image = image.crop((left, top, left + bucket[0], top + bucket[1]))
        image.save(target, format="PNG")
    return original, (left, top)


def prepare_dataset(scan: DatasetScan, out: Path, *, resolution: int, bucket_step: int = 64, buckets: bool = True,
                    validation_fraction: float = 0.1, seed: int = 0, trigger_word: str | None = None) -> Manifest:
    """Resize/crop the readable images of `scan` into `out` and write the manifest (or reuse an equal one)."""
    out = Path(out).expanduser().resolve()
    if out == scan.root or scan.root in out.parents:
        raise RequestError(f"the prepared dataset must not be written inside the source folder {scan.root} (got {out})")
    params = {"resolution": resolution, "bucket_step": bucket_step, "buckets": buckets,
              "validation_fraction": validation_fraction, "seed": seed, "trigger_word": trigger_word,
              "version": FORMAT_VERSION}
    key = _key(scan, params)
    if (out / MANIFEST).is_file():
        existing = load_manifest(out)
        if existing.key == key:
            return existing
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise RequestError(f"{out} exists and is not a prepared dataset; choose an empty or new folder")
    bucket_list = make_buckets(resolution, bucket_step) if buckets else [(resolution, resolution)]
    report = check_dataset(scan, resolution=resolution, trigger_word=trigger_word)
    usable = scan.readable
    held = split_items(usable, validation_fraction, seed)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    items: list[ManifestItem] = []
    for number, image in enumerate(usable):
        bucket = choose_bucket(image.width, image.height, bucket_list)
        name = f"images/{number:05d}.png"
        original, crop = _write_image(image.path, staging / name, bucket)
        caption, note = _caption(image, trigger_word)
        (staging / name).with_suffix(".txt").write_text(caption, encoding="utf-8")
        items.append(ManifestItem(
            name, caption, "validation" if image.relative in held else "train", bucket[0], bucket[1], original, crop,
            image.repeats, image.relative, image.sha256, note,
        ))
    skipped = [{"source": i.relative, "reason": i.error} for i in scan.images if not i.readable]
    manifest = Manifest(staging, str(scan.root), resolution, bucket_step, buckets, validation_fraction, seed, trigger_word,
                        items, skipped, [f.to_dict() for f in report.findings], key)
    (staging / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    manifest.folder = out
    return manifest
