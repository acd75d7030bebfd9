"""The shapes world: captions, deterministic rendering, and the demo tokenizer built on its words."""

from __future__ import annotations

import numpy as np
import pytest

from hayai.demo.architecture import bpe_merges, demo_tokenizer
from hayai.demo.shapes import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SIZES,
    Scene,
    all_scenes,
    caption,
    render,
    render_collage,
    samples,
    vocabulary,
)


def test_caption_grammar():
    assert caption(Scene("circle", "red", "small", "top left", "white")) == (
        "a small red circle at the top left on a white background"
    )
    assert caption(Scene("triangle", "blue", "large", "center", "grey")) == (
        "a large blue triangle in the center on a grey background"
    )


def test_scene_names_the_bad_field():
    with pytest.raises(ValueError, match="colour='magenta'"):
        Scene("circle", "magenta", "small", "top left", "white")


def test_every_combination_once():
    scenes = all_scenes()
    assert len(scenes) == 3 * len(COLOURS) * len(SIZES) * len(POSITIONS) * len(BACKGROUNDS)
    assert len({caption(s) for s in scenes}) == len(scenes)


def test_samples_are_a_function_of_the_seed():
    first = [(c, np.asarray(im)) for _, c, im in samples(7, 20)]
    again = [(c, np.asarray(im)) for _, c, im in samples(7, 20)]
    other = [(c, np.asarray(im)) for _, c, im in samples(8, 20)]
    assert [c for c, _ in first] == [c for c, _ in again]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again))
    assert not all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, other))
    # a sequence seed (as training uses) is just as stable
    assert np.array_equal(np.asarray(next(samples([0, 1, 5]))[2]), np.asarray(next(samples([0, 1, 5]))[2]))


def test_render_without_jitter_puts_the_shape_where_the_caption_says():
    scene = Scene("square", "green", "large", "bottom right", "black")
    pixels = np.asarray(render(scene)).astype(int)
    assert pixels.shape == (64, 64, 3)
    cx, cy = POSITIONS["bottom right"]
    assert tuple(pixels[int(cy), int(cx)]) == COLOURS["green"]
    assert tuple(pixels[2, 2]) == BACKGROUNDS["black"]
    assert tuple(pixels[int(cy), 2]) == BACKGROUNDS["black"]  # left of the square
    side = np.count_nonzero((pixels == COLOURS["green"]).all(axis=-1).any(axis=0))  # columns fully inside
    assert abs(side - SIZES["large"]) <= 1


def test_render_keeps_large_shapes_inside_the_frame():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = Scene("square", "red", "large", "top left", "white")
        pixels = np.asarray(render(scene, rng)).astype(int)
        assert (pixels[0] == 255).all() and (pixels[:, 0] == 255).all()


def test_collage_is_deterministic_and_busy():
    a = np.asarray(render_collage(np.random.default_rng(3)))
    b = np.asarray(render_collage(np.random.default_rng(3)))
    assert np.array_equal(a, b)
    background = np.median(np.concatenate([a[0], a[-1]]), axis=0)
    assert (np.abs(a - background).max(axis=-1) > 30).mean() > 0.1  # far more shape than one small square


# -- the tokenizer ---------------------------------------------------------------------------------
def test_every_caption_word_is_one_token():
    tokenizer = demo_tokenizer()
    for word in vocabulary():
        tokens = tokenizer.tokenize(word)
        assert tokens == [word + "</w>"], (word, tokens)


def test_unknown_words_still_tokenize_without_unk():
    tokenizer = demo_tokenizer()
    ids = tokenizer("a fluffy magenta hexagon, très joli!").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in ids[1:-1]  # the unknown token is <|endoftext|>: none in the middle
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a fluffy magenta hexagon , très joli !"


def test_bpe_merges_rebuild_each_word_and_are_learned_deterministically():
    merges = bpe_merges(["top", "bottom", "to"])
    assert merges == bpe_merges(["top", "bottom", "to"])
    assert ("t", "o") in merges  # the most frequent pair comes first
    assert merges[0] == ("t", "o")
