"""Reading a training folder: its images, their captions, and kohya's `N_name` folders.

A dataset is a folder of images (searched recursively, hidden folders skipped). An image's caption is
the `.txt` (or kohya's `.caption`) file beside it with the same stem, else its row in a
`metadata.jsonl` / `metadata.csv` in its folder (Hugging Face's imagefolder layout: a `file_name`
column and a `text` or `caption` column). A folder named `10_name` (kohya-ss) means 10 repeats per
epoch of class `name`, which also stands in for a missing caption.

Every image is opened and decoded in full, so a truncated or corrupt file is found here, not in the
middle of a training run. Nothing in the folder is written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from hayai.errors import RequestError

__all__ = [
    "CAPTION_SUFFIXES",
    "looks_alike",
    "IMAGE_SUFFIXES",
    "DatasetScan",
    "ImageRecord",
    "dhash",
    "hamming",
    "repeats_folder",
    "scan_dataset",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIXES = (".txt", ".caption")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
_REPEATS_FOLDER = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class ImageRecord:
    path: Path  # absolute
    relative: str  # to the dataset folder, with `/`
    caption: str | None  # None: no caption file or metadata row
    caption_source: str | None  # "txt", "metadata" or None
    repeats: int = 1  # kohya `N_name` folder: N
    folder_class: str | None = None  # kohya `N_name` folder: name
    width: int | None = None
    height: int | None = None
    mode: str | None = None  # PIL mode: "RGB", "RGBA", "L", "P", ...
    error: str | None = None  # why the image cannot be read (None: it can)
    sha256: str | None = None  # of the file's bytes
    dhash: int | None = None  # 64-bit difference hash of the picture (near-duplicate detection)
    thumbnail: bytes | None = field(default=None, repr=False)  # 8x8 RGB: tells apart flat pictures with equal hashes

    @property
    def readable(self) -> bool:
        return self.error is None

    @property
    def folder(self) -> str:
        """The image's folder relative to the dataset ("." for the top)."""
        parent = Path(self.relative).parent.as_posix()
        return parent if parent else "."

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "relative": self.relative, "caption": self.caption,
            "caption_source": self.caption_source, "repeats": self.repeats, "folder_class": self.folder_class,
            "width": self.width, "height": self.height, "mode": self.mode, "error": self.error, "sha256": self.sha256,
        }


@dataclass(frozen=True)
class DatasetScan:
    root: Path
    images: tuple[ImageRecord, ...]
    orphan_captions: tuple[str, ...] = ()  # caption files with no image beside them
    metadata_problems: tuple[str, ...] = field(default=())  # unreadable metadata files or rows

    @property
    def readable(self) -> list[ImageRecord]:
        return [image for image in self.images if image.readable]


def repeats_folder(name: str) -> tuple[int, str] | None:
    """kohya's `10_name` folder -> (10, "name"); None for any other name."""
    match = _REPEATS_FOLDER.match(name)
    if not match or int(match.group(1)) < 1:
        return None
    return int(match.group(1)), match.group(2).strip()


def dhash(image) -> int:
    """Difference hash: 64 bits saying, on a 9x8 greyscale thumbnail, whether each pixel is brighter than
    its right neighbour. Resized or re-encoded copies of a picture differ in a few bits at most."""
    from PIL import Image

    small = image.convert("L").resize((9, 8), Image.Resampling.BILINEAR)
    pixels = list(small.getdata())
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | int(pixels[row * 9 + col] > pixels[row * 9 + col + 1])
    return bits


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


NEAR_DUPLICATE_BITS = 4  # difference-hash bits (of 64) within which two pictures may be the same
NEAR_DUPLICATE_COLOUR = 4.0  # and mean colour difference of their 8x8 thumbnails (of 255) within which they are
NEAR_DUPLICATE_CELL = 24  # and no thumbnail value further apart than this (a small shape of another colour is)


def looks_alike(a: ImageRecord, b: ImageRecord) -> bool:
    """The same picture, resized or re-encoded: equal structure (difference hash) and equal colours (thumbnail).
    The hash alone confuses flat pictures (a small shape on a plain background hashes to nearly all zeros)."""
    if hamming(a.dhash, b.dhash) > NEAR_DUPLICATE_BITS:
        return False
    differences = [abs(x - y) for x, y in zip(a.thumbnail, b.thumbnail)]
    return sum(differences) / len(differences) <= NEAR_DUPLICATE_COLOUR and max(differences) <= NEAR_DUPLICATE_CELL


def _read_image(path: Path) -> dict:
    from PIL import Image, UnidentifiedImageError

    data = path.read_bytes()
    facts = {"sha256": hashlib.sha256(data).hexdigest()}
    try:
        with Image.open(path) as image:
            image.load()  # decodes every pixel: a truncated file fails here
            facts.update(width=image.width, height=image.height, mode=image.mode, dhash=dhash(image),
                         thumbnail=image.convert("RGB").resize((8, 8), Image.Resampling.BOX).tobytes())
    # DecompressionBombError (not an OSError): a small file that would decode to gigabytes of pixels
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        facts["error"] = f"cannot be read as an image ({type(exc).__name__}: {exc})"
    return facts


def _metadata_captions(folder: Path, problems: list[str]) -> dict[str, str]:
    """file name -> caption from a metadata.jsonl / metadata.csv in `folder`."""
    captions: dict[str, str] = {}
    for name in METADATA_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".jsonl"):
                rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            else:
                with open(path, newline="", encoding="utf-8") as file:
                    rows = list(csv.DictReader(file))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
            problems.append(f"{path}: cannot be read ({exc})")
            continue
        for number, row in enumerate(rows, start=1):
            text = row.get("text", row.get("caption")) if isinstance(row, dict) else None
            file_name = row.get("file_name") if isinstance(row, dict) else None
            if not isinstance(file_name, str) or not isinstance(text, str):
                problems.append(f"{path}: row {number} has no file_name and text/caption strings")
                continue
            captions[file_name] = text
    return captions


def _caption_file(image: Path) -> Path | None:
    for suffix in CAPTION_SUFFIXES:
        candidate = image.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def scan_dataset(root: Path) -> DatasetScan:
    """Every image under `root` with its caption, size and hashes (unreadable images are kept, with why)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise RequestError(f"dataset={str(root)!r} is not a folder")
    root = root.resolve()
    images: list[ImageRecord] = []
    captions_used: set[Path] = set()
    caption_files: set[Path] = set()
    problems: list[str] = []
    metadata: dict[Path, dict[str, str]] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in CAPTION_SUFFIXES:
            caption_files.add(path)
            continue
        if suffix not in IMAGE_SUFFIXES:
            continue
        if path.parent not in metadata:
            metadata[path.parent] = _metadata_captions(path.parent, problems)
        caption, source = None, None
        caption_path = _caption_file(path)
        if caption_path is not None:
            try:
                caption, source = caption_path.read_text(encoding="utf-8").strip(), "txt"
                captions_used.add(caption_path)
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{caption_path}: cannot be read ({exc})")
        elif path.name in metadata[path.parent]:
            caption, source = metadata[path.parent][path.name].strip(), "metadata"
        repeats, folder_class = 1, None
        for part in reversed(relative.parts[:-1]):  # the nearest kohya folder counts
            parsed = repeats_folder(part)
            if parsed:
                repeats, folder_class = parsed
                break
        images.append(ImageRecord(path, relative.as_posix(), caption, source, repeats, folder_class, **_read_image(path)))
    orphans = sorted(p.relative_to(root).as_posix() for p in caption_files - captions_used
                     if not any(p.with_suffix(s).is_file() for s in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)))
    return DatasetScan(root, tuple(images), tuple(orphans), tuple(problems))
