"""The adherence metric: it must read the world's own renders back perfectly and catch every wrong attribute."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from hayai.demo.adherence import ATTRIBUTES, analyse, parse_prompt, prompt_set, score
from hayai.demo.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, caption, render, samples

_CHOICES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS, "background": BACKGROUNDS}


def test_parse_prompt_reads_every_attribute():
    assert parse_prompt("a small red circle at the top left on a white background") == {
        "size": "small", "colour": "red", "shape": "circle", "position": "top left", "background": "white",
    }
    # spelling and order do not matter; the background's colour is not taken for the shape's
    assert parse_prompt("On a GRAY background, a large triangle, centre, coloured purple") == {
        "background": "grey", "size": "large", "shape": "triangle", "position": "center", "colour": "purple",
    }
    assert parse_prompt("a blue square") == {"colour": "blue", "shape": "square"}
    assert parse_prompt("a lighthouse at dusk") == {}


def test_ground_truth_renders_score_perfectly():
    """2000 jittered renders of random scenes: every attribute read back right."""
    misses = Counter()
    for scene, text, image in samples(123, 2000):
        for attribute, ok in score(image, text).items():
            misses[attribute] += not ok
    assert sum(misses.values()) == 0, misses


def test_ground_truth_scores_at_another_resolution():
    rng = np.random.default_rng(1)
    for scene, text, _ in samples(5, 100):
        assert all(score(render(scene, rng, size=128), text).values()), text


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_a_wrong_attribute_is_caught_and_nothing_else_is_blamed(attribute):
    rng = np.random.default_rng(2)
    for scene, text, _ in samples(11, 150):
        wrong_value = [v for v in _CHOICES[attribute] if v != getattr(scene, attribute)][int(rng.integers(len(_CHOICES[attribute]) - 1))]
        shown = dataclasses.replace(scene, **{attribute: wrong_value})
        result = score(render(shown, rng), text)
        assert result[attribute] is False, (text, caption(shown))
        assert all(ok for name, ok in result.items() if name != attribute), (text, caption(shown), result)


def test_noise_scores_at_chance():
    rng = np.random.default_rng(0)
    prompts = prompt_set()
    hits = Counter()
    for i in range(300):
        noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        for attribute, ok in score(noise, prompts[i % len(prompts)]).items():
            hits[attribute] += ok
    accuracy = {attribute: hits[attribute] / 300 for attribute in ATTRIBUTES}
    assert accuracy["colour"] < 0.3 and accuracy["position"] < 0.4 and accuracy["shape"] < 0.5, accuracy


def test_a_blank_image_shows_no_shape():
    seen = analyse(Image.new("RGB", (64, 64), BACKGROUNDS["grey"]))
    assert seen.background == "grey"
    assert (seen.shape, seen.colour, seen.size, seen.position) == (None, None, None, None)
    assert score(Image.new("RGB", (64, 64), (255, 255, 255)), "a small red circle in the center on a white background") == {
        "background": True, "colour": False, "shape": False, "size": False, "position": False,
    }


def test_the_prompt_set_is_fixed_and_balanced():
    prompts = prompt_set()
    assert len(prompts) == len(set(prompts)) == 60
    assert prompts == prompt_set()
    parsed = [parse_prompt(p) for p in prompts]
    assert all(set(p) == set(ATTRIBUTES) for p in parsed)
    for attribute, choices in _CHOICES.items():
        counts = Counter(p[attribute] for p in parsed)
        assert set(counts) == set(choices)
        assert max(counts.values()) - min(counts.values()) <= 1, (attribute, counts)
