"""Seed exploration and refinement: many seeds, a contact sheet, then one seed again at more steps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hayai.errors import RequestError
from hayai.generation.engine import Engine
from hayai.generation.imagefile import read_image_metadata
from hayai.generation.request import GenerationRequest
from hayai.models.families import Family
from hayai.sweep import explore, refine_request

PROMPT = "a large blue square in the center on a black background"


def _flat(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=float).ravel()


def test_explore_then_refine_keeps_the_seed_prompt_and_composition(tiny_folders, tmp_path):
    request = GenerationRequest(PROMPT, model=str(tiny_folders[Family.SD1]), steps=3, width=64, height=64, seed=100,
                                output_dir=str(tmp_path))
    engine = Engine()
    explored = explore(engine, request, 4)
    assert [i.seed for i in explored.result.images] == [100, 101, 102, 103]
    sheet = Image.open(explored.contact_sheet)
    assert explored.contact_sheet.name == "contact-100-4.png" and sheet.width >= 2 * 192 and sheet.height >= 2 * 192

    picked = explored.result.images[2]
    refined_request, warnings = refine_request(picked.path, steps=6)
    assert (refined_request.seed, refined_request.prompt, refined_request.steps) == (102, PROMPT, 6)
    assert (refined_request.batch_size, refined_request.batch_count) == (1, 1) and warnings == []
    refined = engine.generate(refined_request).images[0]
    recorded = read_image_metadata(refined.path).hayai
    assert (recorded["image"]["seed"], recorded["request"]["prompt"], recorded["request"]["steps"]) == (102, PROMPT, 6)

    # the same starting noise: the refined image follows its own seed's composition, not the others'
    correlation = [np.corrcoef(_flat(refined.image), _flat(i.image))[0, 1] for i in explored.result.images]
    assert correlation[2] > 0.8, correlation
    assert max(correlation[:2] + correlation[3:]) < correlation[2] - 0.4, correlation


def test_refine_finds_the_seed_of_an_image_inside_a_batch(tiny_folders, tmp_path):
    request = GenerationRequest(PROMPT, model=str(tiny_folders[Family.SD1]), steps=2, width=64, height=64, seed=7,
                                batch_size=2, output_dir=str(tmp_path))
    explored = explore(Engine(), request, 4)
    assert [i.seed for i in explored.result.images] == [7, 8, 9, 10]
    refined, _ = refine_request(explored.result.images[3].path, steps=5, cfg_scale=4.0)
    assert (refined.seed, refined.batch_size, refined.batch_count, refined.cfg_scale) == (10, 1, 1, 4.0)


def test_explore_counts_must_fit_the_batches():
    with pytest.raises(RequestError, match=r"count=5 must be a multiple of batch_size=2 \(try 4\)"):
        explore(Engine(), GenerationRequest("a cat", batch_size=2), 5)
    with pytest.raises(RequestError, match="count=0 must be between 1 and 1024"):
        explore(Engine(), GenerationRequest("a cat"), 0)
