"""The shapes world: simple coloured shapes on plain backgrounds, drawn from a seed.

A `Scene` is five attributes (shape, colour, size, position, background); `caption` writes it as
"a small red circle at the top left on a white background" and `render` draws it at 64x64. Rendering
is supersampled (drawn at 4x, then box-filtered) so edges are antialiased, and jittered a little
(position, size, tint) by a numpy generator, so the same seed always gives the same pixels.

The sizes and places are chosen so the analysis in `adherence.py` can read them back without doubt:
two sizes far apart, five anchors far apart, and colours far from each other and from every background.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "IMAGE_SIZE",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "all_scenes",
    "caption",
    "random_scene",
    "render",
    "samples",
    "vocabulary",
]

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 165, 60),
    "cyan": (40, 200, 215),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}
SIZES: dict[str, float] = {"small": 16.0, "large": 28.0}  # side of the shape's bounding box, in pixels of 64
# centre of the shape's bounding box, in pixels of 64
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (18.0, 18.0),
    "top right": (46.0, 18.0),
    "bottom left": (18.0, 46.0),
    "bottom right": (46.0, 46.0),
    "center": (32.0, 32.0),
}
POSITION_JITTER = 3.0  # +- pixels of 64
SIZE_JITTER = 0.08  # +- fraction of the size
TINT_JITTER = 10  # +- per RGB channel of the shape's colour
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str

    def __post_init__(self) -> None:
        for name, allowed in (
            ("shape", SHAPES), ("colour", COLOURS), ("size", SIZES), ("position", POSITIONS), ("background", BACKGROUNDS)
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")

    @property
    def caption(self) -> str:
        return caption(self)


def caption(scene: Scene) -> str:
    """'a small red circle at the top left on a white background' ('in the center' for the middle)."""
    where = "in the center" if scene.position == "center" else f"at the {scene.position}"
    return f"a {scene.size} {scene.colour} {scene.shape} {where} on a {scene.background} background"


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order."""
    words: list[str] = []
    for scene in all_scenes():
        for word in caption(scene).split():
            if word not in words:
                words.append(word)
    return words


def all_scenes() -> list[Scene]:
    """Every combination of the attributes, in a fixed order."""
    return [Scene(*combo) for combo in itertools.product(SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS)]


def random_scene(rng: np.random.Generator) -> Scene:
    pick = lambda options: list(options)[int(rng.integers(len(options)))]  # noqa: E731
    return Scene(pick(SHAPES), pick(COLOURS), pick(SIZES), pick(POSITIONS), pick(BACKGROUNDS))


def render(scene: Scene, rng: np.random.Generator | None = None, size: int = IMAGE_SIZE):
    """The scene as a `size` x `size` RGB PIL image; jittered by `rng`, exact (no jitter) without one."""
    from PIL import Image, ImageDraw

    if rng is not None:
        dx, dy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
        scale = 1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
        tint = rng.integers(-TINT_JITTER, TINT_JITTER + 1, size=3)
    else:
        dx = dy = 0.0
        scale = 1.0
        tint = np.zeros(3, dtype=int)
    colour = tuple(int(c) for c in np.clip(np.array(COLOURS[scene.colour]) + tint, 0, 255))
    side = SIZES[scene.size] * scale
    cx, cy = POSITIONS[scene.position]
    # keep the whole shape inside the frame, a pixel clear of the edge
    half = side / 2
    cx = float(np.clip(cx + dx, half + 1.5, IMAGE_SIZE - half - 1.5))
    cy = float(np.clip(cy + dy, half + 1.5, IMAGE_SIZE - half - 1.5))

    k = size * _SUPERSAMPLE / IMAGE_SIZE  # from 64-pixel units to supersampled pixels
    big = Image.new("RGB", (size * _SUPERSAMPLE,) * 2, BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(big)
    x0, y0, x1, y1 = (cx - half) * k, (cy - half) * k, (cx + half) * k, (cy + half) * k
    if scene.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif scene.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    else:  # an upright triangle filling the box: apex at the top middle, base along the bottom
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    return big.resize((size, size), Image.Resampling.BOX)


def samples(seed: int | Sequence[int], count: int | None = None) -> Iterator[tuple[Scene, str, object]]:
    """(scene, caption, image) drawn from `seed` (an int or a sequence of ints, as numpy takes it): the
    same seed gives the same sequence, forever if `count` is None."""
    rng = np.random.default_rng(seed)
    produced = 0
    while count is None or produced < count:
        scene = random_scene(rng)
        yield scene, caption(scene), render(scene, rng)
        produced += 1


def render_collage(rng: np.random.Generator, size: int = IMAGE_SIZE, shapes: tuple[int, int] = (3, 7)):
    """Several random shapes (any colour, size and place, overlapping) on a random background.

    Not a scene of the shapes world: training images for the autoencoder, which only has to learn to
    copy local patches of flat colour and edges, and learns that several times faster from images full
    of edges than from one small shape on a large background.
    """
    from PIL import Image, ImageDraw

    k = size * _SUPERSAMPLE / IMAGE_SIZE
    background = list(BACKGROUNDS.values())[int(rng.integers(len(BACKGROUNDS)))]
    big = Image.new("RGB", (size * _SUPERSAMPLE,) * 2, background)
    draw = ImageDraw.Draw(big)
    palette = list(COLOURS.values())
    for _ in range(int(rng.integers(shapes[0], shapes[1] + 1))):
        base = np.array(palette[int(rng.integers(len(palette)))])
        colour = tuple(int(c) for c in np.clip(base + rng.integers(-TINT_JITTER, TINT_JITTER + 1, size=3), 0, 255))
        side = rng.uniform(0.8, 1.1) * list(SIZES.values())[int(rng.integers(len(SIZES)))]
        cx, cy = rng.uniform(0, IMAGE_SIZE, size=2)
        x0, y0, x1, y1 = (cx - side / 2) * k, (cy - side / 2) * k, (cx + side / 2) * k, (cy + side / 2) * k
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    return big.resize((size, size), Image.Resampling.BOX)
