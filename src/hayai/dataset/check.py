"""The dataset doctor: what a scanned dataset holds, and findings about it (a pure function of the scan).

The advice comes from seed 002 (a Japanese guide to training LoRAs): start with 20-50 images; keep
them varied (angles, poses, backgrounds: near-duplicates add nothing), of high quality (sharp,
large enough), consistent in style, accurately captioned and balanced (no element over-represented),
and preprocessed (resized and cropped: `hayai dataset prepare`). Findings say what was found, what it
does to training, and what to do; "error" means there is nothing to train on, "warning" that training
will run but probably worse (a corrupt image is skipped, a missing caption replaced), "info" is advice.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field

from hayai.dataset.scan import DatasetScan, ImageRecord, looks_alike

__all__ = ["DatasetReport", "Finding", "LEVELS", "caption_tags", "check_dataset", "fallback_caption"]

LEVELS = ("error", "warning", "info")
ADVISED_IMAGES = (20, 50)  # seed 002: "usually start with 20-50 images"
DOMINANT_TAG_SHARE = 0.8  # a tag in more of the captions than this is tied to everything the LoRA learns
MIN_SIDE = 256  # without a training resolution: smaller images are "tiny"
_STOPWORDS = frozenset("a an the of on in at to with and or by for from is are".split())
_SHOWN = 5


@dataclass(frozen=True)
class Finding:
    level: str  # "error", "warning" or "info"
    code: str  # stable identifier, e.g. "missing_caption"
    message: str
    paths: tuple[str, ...] = ()  # the images concerned (relative to the dataset)

    def to_dict(self) -> dict:
        return {"level": self.level, "code": self.code, "message": self.message, "paths": list(self.paths)}


@dataclass
class DatasetReport:
    root: str
    images: int  # image files found
    usable: int  # of them readable
    folders: dict[str, dict]  # folder -> {"images", "repeats", "class"}
    sizes: dict[str, int]  # min/max/median width and height of the readable images
    aspect_ratios: dict[str, int]  # "3:2" -> images
    captions: dict[str, int]  # "txt", "metadata", "missing", "empty"
    tags: list[tuple[str, int]]  # caption tags by frequency (tags: comma-separated, else words)
    exact_duplicates: list[list[str]]
    near_duplicates: list[list[str]]
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    def to_dict(self) -> dict:
        return {
            "root": self.root, "images": self.images, "usable": self.usable, "folders": self.folders,
            "sizes": self.sizes, "aspect_ratios": self.aspect_ratios, "captions": self.captions,
            "tags": [[tag, count] for tag, count in self.tags], "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates, "findings": [f.to_dict() for f in self.findings],
        }


def caption_tags(captions: list[str]) -> list[list[str]]:
    """Each caption's tags: comma-separated when most captions use commas (booru style), else its words
    without articles and prepositions (prose captions). Lower case, each tag once per caption."""
    comma = sum("," in caption for caption in captions) > len(captions) / 2
    out = []
    for caption in captions:
        if comma:
            tags = [t.strip().lower() for t in caption.split(",")]
        else:
            tags = [w for w in re.findall(r"[\w'-]+", caption.lower()) if w not in _STOPWORDS]
        out.append(list(dict.fromkeys(t for t in tags if t)))
    return out


def fallback_caption(image: ImageRecord, trigger_word: str | None) -> str:
    """What an image without a caption trains with: its kohya class, else the trigger word, else nothing."""
    return image.folder_class or trigger_word or ""


def _ratio_name(width: int, height: int) -> str:
    common = {(1, 1): "1:1", (4, 3): "4:3", (3, 4): "3:4", (3, 2): "3:2", (2, 3): "2:3", (16, 9): "16:9",
              (9, 16): "9:16", (2, 1): "2:1", (1, 2): "1:2"}
    ratio = width / height
    (a, b), name = min(common.items(), key=lambda item: abs(ratio / (item[0][0] / item[0][1]) - 1))
    return name if abs(ratio / (a / b) - 1) < 0.05 else f"{ratio:.2f}:1"


def _shown(paths: list[str]) -> str:
    more = f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
    return ", ".join(paths[:_SHOWN]) + more


def _duplicate_groups(images: list[ImageRecord]) -> tuple[list[list[str]], list[list[str]]]:
    by_hash: dict[str, list[str]] = {}
    for image in images:
        by_hash.setdefault(image.sha256, []).append(image.relative)
    exact = [group for group in by_hash.values() if len(group) > 1]
    firsts = [image for image in images if by_hash[image.sha256][0] == image.relative]
    near: list[list[str]] = []
    grouped: set[str] = set()
    for i, image in enumerate(firsts):
        if image.relative in grouped:
            continue
        group = [image.relative] + [
            other.relative for other in firsts[i + 1 :]
            if other.relative not in grouped and looks_alike(image, other)
        ]
        if len(group) > 1:
            near.append(group)
            grouped.update(group)
    return exact, near


def check_dataset(scan: DatasetScan, *, resolution: int | None = None, trigger_word: str | None = None) -> DatasetReport:
    """Counts, sizes, captions, duplicates and tags of a scanned dataset, with findings (pure)."""
    usable = scan.readable
    findings: list[Finding] = []
    add = lambda level, code, message, paths=(): findings.append(Finding(level, code, message, tuple(paths)))  # noqa: E731

    folders: dict[str, dict] = {}
    for image in scan.images:
        entry = folders.setdefault(image.folder, {"images": 0, "repeats": image.repeats, "class": image.folder_class})
        entry["images"] += 1

    # -- the images ------------------------------------------------------------------------------
    if not scan.images:
        add("error", "no_images", f"no images ({', '.join(s.lstrip('.') for s in ('.png', '.jpg', '.webp', '.bmp'))}) "
            f"in {scan.root}: there is nothing to train on")
    broken = [image for image in scan.images if not image.readable]
    if broken:
        add("warning", "unreadable_image", f"{len(broken)} image(s) cannot be read and will be skipped: "
            + "; ".join(f"{i.relative} ({i.error})" for i in broken[:_SHOWN]), [i.relative for i in broken])
    if scan.images and not usable:
        add("error", "no_usable_images", "none of the images can be read: there is nothing to train on")
    floor = resolution // 2 if resolution else MIN_SIDE
    tiny = [i for i in usable if min(i.width, i.height) < floor]
    if tiny:
        target = f"the training resolution {resolution}" if resolution else f"{MIN_SIDE} px"
        add("warning", "tiny_image", f"{len(tiny)} image(s) have a side under {floor} px, less than half of {target}: "
            f"upscaled, they train blur (use sharp images at least the training size): {_shown([i.relative for i in tiny])}",
            [i.relative for i in tiny])

    sizes: dict[str, int] = {}
    ratios: Counter = Counter()
    if usable:
        widths, heights = [i.width for i in usable], [i.height for i in usable]
        sizes = {"min_width": min(widths), "max_width": max(widths), "median_width": int(statistics.median(widths)),
                 "min_height": min(heights), "max_height": max(heights), "median_height": int(statistics.median(heights))}
        ratios = Counter(_ratio_name(i.width, i.height) for i in usable)
        if len(ratios) > 1:
            add("info", "aspect_ratios", f"{len(ratios)} aspect ratios ({', '.join(f'{r}: {n}' for r, n in ratios.most_common())}): "
                "aspect-ratio buckets (the default) train each image at its own shape instead of cropping it square")
        sides = [max(i.width, i.height) for i in usable]
        if max(sides) > 4 * min(sides):
            add("warning", "inconsistent_sizes", f"image sizes range from {min(sides)} to {max(sides)} px on the long side: "
                "a consistent set (same source, similar quality) trains better")
        modes = Counter("greyscale" if i.mode in ("L", "LA", "1", "I", "I;16", "F") else "colour" for i in usable)
        if len(modes) > 1:
            add("warning", "mixed_colour", f"{modes['greyscale']} greyscale and {modes['colour']} colour images: "
                "a mixed style teaches a mixed style (keep the style consistent)",
                [i.relative for i in usable if i.mode in ("L", "LA", "1", "I", "I;16", "F")])

    # -- how many (seed 002: 20-50, varied) ------------------------------------------------------
    exact, near = _duplicate_groups(usable)
    distinct = len(usable) - sum(len(g) - 1 for g in exact) - sum(len(g) - 1 for g in near)
    low, high = ADVISED_IMAGES
    if 0 < distinct < low:
        add("warning", "few_images", f"{distinct} distinct image(s): start with {low}-{high} varied images "
            "(angles, poses, backgrounds); with fewer, the LoRA tends to copy them rather than learn the concept")
    elif distinct > high:
        add("info", "many_images", f"{distinct} distinct images, more than the {low}-{high} a first LoRA needs: "
            "fine if they are consistent; watch the validation loss for overfitting")
    if exact:
        add("warning", "exact_duplicates", f"{len(exact)} group(s) of identical files (each copy counts as one more repeat, "
            f"and variety is what the LoRA learns from): {'; '.join(' = '.join(g) for g in exact[:_SHOWN])}",
            [p for g in exact for p in g[1:]])
    if near:
        add("warning", "near_duplicates", f"{len(near)} group(s) of near-identical images (resized or re-encoded copies): "
            f"{'; '.join(' ~ '.join(g) for g in near[:_SHOWN])}", [p for g in near for p in g[1:]])

    # -- captions (seed 002: accurate captions, a balanced dataset) ------------------------------
    missing = [i for i in usable if i.caption is None]
    empty = [i for i in usable if i.caption is not None and not i.caption.strip()]
    captions = {"txt": sum(i.caption_source == "txt" for i in usable),
                "metadata": sum(i.caption_source == "metadata" for i in usable),
                "missing": len(missing), "empty": len(empty)}
    if missing:
        stand_in = sorted({fallback_caption(i, trigger_word) for i in missing})
        shown = " or ".join(repr(s) if s else "an empty caption" for s in stand_in)
        add("warning", "missing_caption", f"{len(missing)} image(s) have no caption (.txt beside the image or a metadata.jsonl row); "
            f"they train with {shown}: {_shown([i.relative for i in missing])}", [i.relative for i in missing])
    if empty:
        add("warning", "empty_caption", f"{len(empty)} caption file(s) are empty: those images train unconditioned "
            f"(caption each image accurately): {_shown([i.relative for i in empty])}", [i.relative for i in empty])
    if scan.orphan_captions:
        add("info", "orphan_captions", f"{len(scan.orphan_captions)} caption file(s) have no image: {_shown(list(scan.orphan_captions))}",
            list(scan.orphan_captions))
    for problem in scan.metadata_problems:
        add("warning", "metadata", problem)

    texts = [i.caption for i in usable if i.caption]
    tagged = caption_tags(texts)
    counts = Counter(tag for tags in tagged for tag in tags)
    trigger = trigger_word.lower() if trigger_word else None
    if trigger and texts:
        without = [i.relative for i in usable if i.caption and trigger not in i.caption.lower()]
        if without:
            add("info", "trigger_missing", f"the trigger word {trigger_word!r} is not in {len(without)} of {len(texts)} captions; "
                "training puts it in front of those", without)
    if len(texts) >= 5:
        dominant = [(tag, n) for tag, n in counts.most_common() if n / len(texts) >= DOMINANT_TAG_SHARE and tag != trigger]
        if dominant:
            add("info", "dominant_tags", "in almost every caption: " + ", ".join(f"{t!r} ({n}/{len(texts)})" for t, n in dominant[:8])
                + ": what every caption says becomes part of the trigger; caption what varies and leave out what the LoRA "
                "should learn")
        varying = [(tag, n) for tag, n in counts.most_common() if n / len(texts) < DOMINANT_TAG_SHARE]
        if len(varying) >= 4:
            top, median = varying[0][1], statistics.median(n for _, n in varying)
            if top >= 5 * median and top / len(texts) >= 0.5:
                add("warning", "unbalanced_tags", f"{varying[0][0]!r} is in {top} of {len(texts)} captions, {top / median:.0f}x the "
                    "typical tag: a balanced dataset trains better than one biased to one element")
    if usable and not findings_of(findings, "error"):
        add("info", "prepare", "images are resized and cropped into aspect buckets at training time (or ahead of it with "
            "`hayai dataset prepare`); your folder is never modified")
    return DatasetReport(
        root=str(scan.root), images=len(scan.images), usable=len(usable), folders=folders, sizes=sizes,
        aspect_ratios=dict(ratios.most_common()), captions=captions, tags=counts.most_common(30),
        exact_duplicates=exact, near_duplicates=near, findings=findings,
    )


def findings_of(findings: list[Finding], level: str) -> list[Finding]:
    return [f for f in findings if f.level == level]
