"""Prompt adherence: read a shapes image back into attributes and score them against its prompt.

The analysis uses nothing learned, only pixels, so it can judge any model:
1. background: the median colour of the image's border, named by the nearest background colour;
2. mask: the pixels far from that colour, the largest connected blob of them, holes filled;
3. colour: the median colour of the blob's inner pixels, named by the nearest palette colour;
4. shape: each shape's template with the blob's area and centroid, the one with the highest IoU;
5. size: the bounding box's longer side, small or large by the midpoint of the two sizes;
6. position: the blob's centroid, named by the nearest of the five anchors.

`parse_prompt` reads the attributes a prompt asks for (only the ones it names are scored), and
`evaluate` generates a fixed, balanced prompt set over a few seeds and reports accuracy per attribute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from hayai.demo.shapes import BACKGROUNDS, COLOURS, IMAGE_SIZE, POSITIONS, SHAPES, SIZES, Scene, caption

__all__ = [
    "ATTRIBUTES",
    "AdherenceReport",
    "Analysis",
    "analyse",
    "evaluate",
    "evaluate_pipeline",
    "parse_prompt",
    "prompt_set",
    "score",
]

ATTRIBUTES = ("colour", "shape", "size", "position", "background")
MIN_BLOB_PIXELS = 12  # fewer pixels than this (of 64x64) is no shape at all
_POSITION_WORDS = {
    "top left": "top left", "top right": "top right", "bottom left": "bottom left", "bottom right": "bottom right",
    "center": "center", "centre": "center", "middle": "center",
}


@dataclass(frozen=True)
class Analysis:
    """What the image shows. `shape`, `colour`, `size`, `position` are None when no shape was found."""

    background: str
    colour: str | None
    shape: str | None
    size: str | None
    position: str | None
    pixels: int  # the blob's area in pixels of a 64x64 image
    shape_iou: float  # IoU of the best template

    def get(self, attribute: str) -> str | None:
        return getattr(self, attribute)


# -- the prompt ----------------------------------------------------------------------------------
def parse_prompt(prompt: str) -> dict[str, str]:
    """The attributes a prompt names, e.g. {"colour": "red", "shape": "circle", ...}; missing ones are absent.

    The background is read from "<colour> background" first, so its colour word is not taken for the
    shape's.
    """
    text = " ".join(re.findall(r"[a-z]+", prompt.lower()))
    found: dict[str, str] = {}
    match = re.search(r"\b(" + "|".join(BACKGROUNDS) + "|gray" + r")\s+background\b", text)
    if match:
        found["background"] = "grey" if match.group(1) == "gray" else match.group(1)
        text = text[: match.start()] + text[match.end() :]
    for attribute, words in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES)):
        match = re.search(r"\b(" + "|".join(words) + r")\b", text)
        if match:
            found[attribute] = match.group(1)
    match = re.search(r"\b(" + "|".join(_POSITION_WORDS) + r")\b", text)
    if match:
        found["position"] = _POSITION_WORDS[match.group(1)]
    return found


# -- the image -----------------------------------------------------------------------------------
def _nearest(colour: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    names = list(table)
    distances = [float(np.sum((colour - np.array(table[name], dtype=float)) ** 2)) for name in names]
    return names[int(np.argmin(distances))]


# side of each shape's box per square root of its area: a square of side L has area L^2, a circle of
# diameter L has area pi L^2 / 4, the upright triangle of base and height L has area L^2 / 2
_SIDE_PER_ROOT_AREA = {"square": 1.0, "circle": 2 / np.sqrt(np.pi), "triangle": np.sqrt(2.0)}


def _template(shape: str, area: float, centroid: tuple[float, float], size: int) -> np.ndarray:
    """A boolean mask of `shape` with the given area and centroid, upright as `render` draws it.

    Matching area and centroid (not the bounding box) keeps the fit honest when a model softens a
    corner: a triangle with a rounded apex still has its mass low and wide, which no circle has.
    """
    side = _SIDE_PER_ROOT_AREA[shape] * np.sqrt(area)
    cx, cy = centroid
    ys, xs = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    if shape == "square":
        return (np.abs(xs - cx) <= side / 2) & (np.abs(ys - cy) <= side / 2)
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= (side / 2) ** 2
    top = cy - 2 * side / 3  # a triangle's centroid lies two thirds of the way down from its apex
    return (ys >= top) & (ys <= top + side) & (np.abs(xs - cx) <= (side / 2) * (ys - top) / side)


def analyse(image) -> Analysis:
    """Read background, colour, shape, size and position back from a shapes image (any size; read at 64)."""
    from PIL import Image
    from scipy import ndimage

    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=float)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3), pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background_colour = np.median(border, axis=0)
    background = _nearest(background_colour, BACKGROUNDS)

    distance = np.sqrt(((pixels - background_colour) ** 2).sum(axis=-1))
    # every shape colour is >= ~100 away from every background; half of the farthest pixel's distance
    # separates a shape from the background even when the model softens its edges
    threshold = max(40.0, 0.5 * float(np.percentile(distance, 99.5)))
    labels, count = ndimage.label(distance > threshold)
    if count == 0:
        return Analysis(background, None, None, None, None, 0, 0.0)
    areas = ndimage.sum_labels(np.ones_like(labels), labels, index=range(1, count + 1))
    blob = ndimage.binary_fill_holes(labels == (int(np.argmax(areas)) + 1))
    area = int(blob.sum())
    if area < MIN_BLOB_PIXELS:
        return Analysis(background, None, None, None, None, area, 0.0)

    inner = ndimage.binary_erosion(blob)
    colour = _nearest(np.median(pixels[inner if inner.sum() >= 4 else blob], axis=0), COLOURS)

    ys, xs = np.nonzero(blob)
    centroid = (float(xs.mean() + 0.5), float(ys.mean() + 0.5))
    ious = {}
    for shape in SHAPES:
        template = _template(shape, area, centroid, IMAGE_SIZE)
        ious[shape] = float((template & blob).sum() / (template | blob).sum())
    shape = max(ious, key=ious.get)

    side = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    size = "small" if side < (SIZES["small"] + SIZES["large"]) / 2 else "large"

    position = min(POSITIONS, key=lambda name: float(np.sum((np.array(centroid) - np.array(POSITIONS[name])) ** 2)))
    return Analysis(background, colour, shape, size, position, area, ious[shape])


def score(image, prompt: str) -> dict[str, bool]:
    """For each attribute the prompt names: does the image show it?"""
    wanted = parse_prompt(prompt)
    seen = analyse(image)
    return {attribute: seen.get(attribute) == value for attribute, value in wanted.items()}


# -- the benchmark -------------------------------------------------------------------------------
def prompt_set() -> list[str]:
    """60 fixed prompts, balanced: every shape 20 times, colour 8-9, size 30, position 12, background 20.

    Shape, colour and position cycle with co-prime periods (3, 7, 5), so the 60 prompts hold 60
    different (shape, colour, position) triples; size and background cycle on other counters.
    """
    shapes, colours, sizes, positions, backgrounds = (list(x) for x in (SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS))
    prompts = []
    for i in range(60):
        scene = Scene(
            shape=shapes[i % 3],
            colour=colours[i % 7],
            size=sizes[(i // 3) % 2],
            position=positions[i % 5],
            background=backgrounds[(i // 5) % 3],
        )
        prompts.append(caption(scene))
    return prompts


@dataclass
class AdherenceReport:
    model: str
    steps: int
    cfg_scale: float
    sampler: str
    schedule_type: str
    seeds: list[int]
    images: int
    accuracy: dict[str, float]  # attribute -> fraction of images where it matched the prompt
    seconds: float
    failures: list[dict] = field(default_factory=list)  # per image that missed something: prompt, seed, what was seen

    def to_dict(self) -> dict:
        return {
            "model": self.model, "steps": self.steps, "cfg_scale": self.cfg_scale, "sampler": self.sampler,
            "schedule_type": self.schedule_type, "seeds": self.seeds, "images": self.images,
            "accuracy": self.accuracy, "seconds": round(self.seconds, 2), "failures": self.failures,
        }


def evaluate(
    model: str | None = None,
    *,
    steps: int = 20,
    cfg_scale: float = 7.0,
    sampler: str | None = None,
    schedule_type: str = "Automatic",
    seeds: int = 2,
    prompts: list[str] | None = None,
    engine=None,
    progress=None,
    request_fields: dict | None = None,
    on_image=None,
    run_options: dict | None = None,
) -> AdherenceReport:
    """The adherence of `model` (a name or path, as `hayai generate -m` takes; None: the default model).

    Every prompt of `prompt_set()` is generated by `Engine.generate` as one batch of `seeds` images (so
    with seeds 0..seeds-1, the sampler, schedule and size the engine picks, and pixel for pixel what
    `hayai generate` makes), and each image is scored. Without an `engine`, the model is found in the
    user's catalog but the images are neither saved nor logged to the user's history.
    `progress(done, total)` is called after each prompt. `request_fields` are more request fields for
    every image (e.g. speed levers), `run_options` changes to the engine's run options (e.g. execution
    levers); `on_image(prompt, seed, image)` sees every image scored.
    """
    import tempfile
    import time
    from pathlib import Path

    from hayai.generation.engine import Engine
    from hayai.generation.request import GenerationRequest

    start = time.perf_counter()
    prompts = prompts or prompt_set()
    with tempfile.TemporaryDirectory(prefix="hayai-eval-") as scratch:
        if engine is None:
            from hayai.models.catalog import Catalog
            from hayai.store import Store

            with Store() as user_store:
                source = Catalog(user_store).resolve(model)
            model = str(source.path)
            engine = Engine(store=Store(Path(scratch) / "eval.db"))
        tally = _Tally()
        resolved = None
        for done, prompt in enumerate(prompts, start=1):
            settings = {"model": model, "steps": steps, "cfg_scale": cfg_scale, "sampler": sampler,
                        "schedule_type": schedule_type, "seed": 0, "batch_size": seeds}
            request = GenerationRequest(prompt, **{**settings, **(request_fields or {})})  # the fields win
            result = engine.generate(request, engine.run_options(**{**(run_options or {}), "save": False}))
            resolved = result.request
            for image in result.images:
                tally.add(image.image, prompt, image.seed)
                if on_image is not None:
                    on_image(prompt, image.seed, image.image)
            if progress is not None:
                progress(done, len(prompts))
    return tally.report(
        model=result.model, steps=resolved.steps, cfg_scale=resolved.cfg_scale, sampler=resolved.sampler,
        schedule_type=resolved.schedule_type, seeds=seeds, seconds=time.perf_counter() - start,
    )


class _Tally:
    """Hits per attribute over the images scored so far."""

    def __init__(self) -> None:
        self.hits = {attribute: 0 for attribute in ATTRIBUTES}
        self.asked = {attribute: 0 for attribute in ATTRIBUTES}
        self.images = 0
        self.failures: list[dict] = []

    def add(self, image, prompt: str, seed: int) -> None:
        wanted, seen = parse_prompt(prompt), analyse(image)
        self.images += 1
        for attribute, value in wanted.items():
            self.asked[attribute] += 1
            self.hits[attribute] += seen.get(attribute) == value
        if any(seen.get(attribute) != value for attribute, value in wanted.items()):
            self.failures.append({"prompt": prompt, "seed": seed, "seen": {a: seen.get(a) for a in ATTRIBUTES}})

    def report(self, *, model, steps, cfg_scale, sampler, schedule_type, seeds, seconds) -> AdherenceReport:
        accuracy = {a: self.hits[a] / self.asked[a] for a in ATTRIBUTES if self.asked[a]}
        return AdherenceReport(
            model=model, steps=steps, cfg_scale=float(cfg_scale), sampler=sampler, schedule_type=schedule_type,
            seeds=list(range(seeds)), images=self.images, accuracy=accuracy, seconds=seconds, failures=self.failures,
        )


def evaluate_pipeline(
    pipe,
    *,
    steps: int,
    cfg_scale: float,
    seeds: int = 1,
    prompts: list[str] | None = None,
    batch: int = 30,
) -> AdherenceReport:
    """Adherence of a pipeline object as it is set up (its scheduler included), for checks during training.

    Several prompts share one pipeline call (`batch` images); each image still gets its own CPU
    generator seeded with its seed, as in the engine.
    """
    import time

    import torch

    start = time.perf_counter()
    prompts = prompts or prompt_set()
    jobs = [(prompt, seed) for seed in range(seeds) for prompt in prompts]
    tally = _Tally()
    for first in range(0, len(jobs), batch):
        chunk = jobs[first : first + batch]
        with torch.no_grad():
            images = pipe(
                prompt=[prompt for prompt, _ in chunk],
                negative_prompt=[""] * len(chunk),
                num_inference_steps=steps,
                guidance_scale=float(cfg_scale),
                generator=[torch.Generator("cpu").manual_seed(seed) for _, seed in chunk],
                output_type="pil",
            ).images
        for (prompt, seed), image in zip(chunk, images):
            tally.add(image, prompt, seed)
    return tally.report(
        model=type(pipe).__name__, steps=steps, cfg_scale=cfg_scale, sampler=type(pipe.scheduler).__name__,
        schedule_type="", seeds=seeds, seconds=time.perf_counter() - start,
    )
