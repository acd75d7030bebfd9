"""Seed exploration ("gacha"): many seeds of one prompt cheaply, then one of them again at higher quality.

`explore` generates `count` consecutive seeds (seed, seed+1, ...: image i of a run gets seed + i, as in
A1111) with the request's settings, saves every image with its metadata as `hayai generate` does, and
draws a contact sheet labelled with the seeds. `refine_request` reads one of those images back and
makes the request that re-runs that image's own seed and prompt alone, with overrides such as more
steps: the initial noise depends only on the seed, so the composition carries over.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from hayai.errors import RequestError
from hayai.generation.request import MAX_SEED, GenerationRequest

__all__ = ["ExploreResult", "explore", "refine_request"]

MAX_EXPLORE = 1024


@dataclass
class ExploreResult:
    result: object  # hayai.generation.results.GenerationResult
    contact_sheet: Path | None  # None when nothing was saved

    def to_dict(self) -> dict:
        return {**self.result.to_dict(), "contact_sheet": str(self.contact_sheet) if self.contact_sheet else None}


def explore(engine, request: GenerationRequest, count: int, *, progress=None, save: bool = True,
            cancel=None) -> ExploreResult:
    """`count` images of `request`'s prompt with seeds seed, seed+1, ...; batches of `request.batch_size`.
    `cancel` (a `CancelToken`) stops it at the next step, keeping the images finished (the sheet shows them)."""
    if not 1 <= count <= MAX_EXPLORE:
        raise RequestError(f"count={count} must be between 1 and {MAX_EXPLORE}")
    if count % request.batch_size:
        raise RequestError(f"count={count} must be a multiple of batch_size={request.batch_size} "
                           f"(try {count - count % request.batch_size or request.batch_size})")
    request = dataclasses.replace(request, batch_count=count // request.batch_size)
    result = engine.generate(request, engine.run_options(cancel=cancel), progress=progress, save=save)
    sheet = None
    if save and result.images:
        from hayai.generation.imagefile import unique_path
        from hayai.sweep.grid import contact_sheet

        resolved = result.request
        title = f"{resolved.prompt[:80]} | {resolved.steps} steps, CFG {resolved.cfg_scale:g}, {resolved.sampler}"
        image = contact_sheet([i.image for i in result.images], [f"seed {i.seed}" for i in result.images], title=title)
        sheet = unique_path(Path(result.images[0].path).parent / f"contact-{resolved.seed}-{count}.png")
        image.save(sheet)
    return ExploreResult(result, sheet)


def refine_request(image_path: Path, **overrides) -> tuple[GenerationRequest, list[str]]:
    """The request that makes the image at `image_path` again, alone, from its own seed and prompt, with
    `overrides` (e.g. steps=50). Works on hayai images (the whole run is recorded) and on A1111 ones."""
    from hayai.generation.saving import request_from_image

    request, keep, warnings = request_from_image(Path(image_path))
    seed = (request.seed + (min(keep) if keep else 0)) % (MAX_SEED + 1)  # image i of a batch has seed + i
    overrides.setdefault("output_dir", str(Path(image_path).expanduser().resolve().parent))  # beside the image
    try:
        request = dataclasses.replace(request, seed=seed, batch_size=1, batch_count=1, **overrides)
    except TypeError as error:
        raise RequestError(f"refine: {error}") from None
    return request, warnings
