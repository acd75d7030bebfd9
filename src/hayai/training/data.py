"""Training examples from a prepared dataset: the data order, captions as they train, pixels, conditioning.

The data order is a pure function of (seed, epoch): each example appears `repeats` times (kohya's
`N_name` folders), examples of one bucket are batched together, and the batches are shuffled. So a
resumed run needs only the number of micro-batches already consumed to continue exactly where the
interrupted run was; nothing about the order has to be saved.

Caption shuffle and dropout draw from the training generator (saved in checkpoints), so they resume
exactly too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hayai.dataset.prepare import Manifest
from hayai.errors import HayaiError
from hayai.models.families import Family

__all__ = [
    "Example",
    "batches_per_epoch",
    "encode_captions",
    "epoch_plan",
    "examples_from",
    "load_pixels",
    "shape_caption",
    "time_ids",
]


@dataclass(frozen=True)
class Example:
    index: int
    file: Path
    caption: str
    width: int  # bucket
    height: int
    original_size: tuple[int, int]  # (width, height) of the source image (SDXL's size conditioning)
    crop: tuple[int, int]  # (left, top)
    repeats: int = 1


def examples_from(manifest: Manifest, split: str) -> list[Example]:
    return [
        Example(i, manifest.folder / item.file, item.caption, item.width, item.height, tuple(item.original_size),
                tuple(item.crop), item.repeats)
        for i, item in enumerate(manifest.split(split))
    ]


def epoch_plan(examples: list[Example], batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batches of example indices (pure): repeats expanded, one bucket per batch, shuffled."""
    import numpy as np

    rng = np.random.default_rng([seed, epoch])
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for example in examples:
        by_bucket.setdefault((example.width, example.height), []).extend([example.index] * example.repeats)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        ids = by_bucket[bucket]
        ids = [ids[j] for j in rng.permutation(len(ids))]
        batches.extend(ids[k : k + batch] for k in range(0, len(ids), batch))
    return [batches[j] for j in rng.permutation(len(batches))]


def batches_per_epoch(examples: list[Example], batch: int) -> int:
    counts: dict[tuple[int, int], int] = {}
    for example in examples:
        counts[(example.width, example.height)] = counts.get((example.width, example.height), 0) + example.repeats
    return sum(math.ceil(n / batch) for n in counts.values())


def shape_caption(caption: str, generator, *, shuffle: bool, keep_tokens: int, dropout: float) -> str:
    """The caption as it trains this time: dropped (empty) with probability `dropout`, its comma-separated
    tags after the first `keep_tokens` shuffled when `shuffle`. Draws from `generator` only when needed."""
    import torch

    if dropout > 0 and float(torch.rand((), generator=generator)) < dropout:
        return ""
    if not shuffle:
        return caption
    tags = [t.strip() for t in caption.split(",")]
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    if len(tail) > 1:
        tail = [tail[i] for i in torch.randperm(len(tail), generator=generator).tolist()]
    return ", ".join(head + tail)


def load_pixels(example: Example):
    """The prepared image as a [3, H, W] float tensor in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(example.file) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # changed since it was prepared
        raise HayaiError(f"prepared image {example.file} cannot be read ({type(exc).__name__}: {exc}): the dataset "
                         "changed after it was prepared; prepare it again (`hayai dataset prepare`)") from None
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def time_ids(example: Example) -> list[int]:
    """SDXL's micro-conditioning: original size, crop top-left, target size, each (height, width)."""
    (ow, oh), (left, top) = example.original_size, example.crop
    return [oh, ow, top, left, example.height, example.width]


def encode_captions(pipe, family: Family, captions: list[str], device) -> dict:
    """{"embeds": [B, L, D], "pooled": [B, P] or None} as the pipeline itself encodes plain prompts."""
    family = Family(family)
    if family in (Family.SD1, Family.SD2):
        embeds, _ = pipe.encode_prompt(captions, device, 1, False)
        return {"embeds": embeds, "pooled": None}
    if family is Family.SDXL:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=captions, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return {"embeds": embeds, "pooled": pooled}
    if family is Family.SD3:
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=captions, prompt_2=None, prompt_3=None, device=device,
                                                  num_images_per_prompt=1, do_classifier_free_guidance=False)
        return {"embeds": embeds, "pooled": pooled}
    raise ValueError(f"family={family.value!r}: LoRA training supports sd1, sd2, sdxl and sd3")
