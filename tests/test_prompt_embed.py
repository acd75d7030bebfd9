"""Prompt embeddings: equal to the pipelines' own `encode_prompt` where that applies, A1111's chunking,
emphasis and prompt editing where it does not. Tiny tokenizers give one token per character."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hayai.generation.encoding import prompt_kwargs
from hayai.models.families import Family
from hayai.models.tiny import build_tiny_pipeline
from hayai.prompts import parse_attention
from hayai.prompts.chunks import clip_chunks


FAMILIES = [Family.SD1, Family.SDXL, Family.SD3]


@pytest.fixture(scope="module")
def pipes():
    return {family: build_tiny_pipeline(family) for family in FAMILIES}


def _reference(pipe, family, prompt, negative, **kwargs):
    """The pipeline's own encode_prompt, as its __call__ runs it (under no_grad), in our kwargs' names."""
    with torch.no_grad():
        if family is Family.SD1:
            pos, neg = pipe.encode_prompt(prompt, "cpu", 1, True, negative, **kwargs)
            return {"prompt_embeds": pos, "negative_prompt_embeds": neg}
        if family is Family.SDXL:
            out = pipe.encode_prompt(prompt, device="cpu", negative_prompt=negative, **kwargs)
        else:
            out = pipe.encode_prompt(prompt, None, None, device="cpu", negative_prompt=negative, **kwargs)
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    return dict(zip(names, out))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.value)
def test_plain_short_prompt_equals_the_pipelines_encode_prompt(pipes, family):
    pipe = pipes[family]
    ours, callback = prompt_kwargs(pipe, family, "a red cat, sitting <lora:style:0.5>", "blurry, dark", 1, steps=20)
    reference = _reference(pipe, family, "a red cat, sitting ", "blurry, dark")
    assert callback is None and ours.pop("num_images_per_prompt") == 1
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.value)
def test_weight_one_equals_plain_text(pipes, family):
    pipe = pipes[family]
    weighted, _ = prompt_kwargs(pipe, family, "(cat:1.0), a dog", "", 1, steps=20)
    plain, _ = prompt_kwargs(pipe, family, "cat, a dog", "", 1, steps=20)
    assert weighted.keys() == plain.keys()
    for name, value in plain.items():
        assert torch.equal(weighted[name], value) if torch.is_tensor(value) else weighted[name] == value, name
    emphasized, _ = prompt_kwargs(pipe, family, "(cat:1.4), a dog", "", 1, steps=20)
    assert not torch.equal(emphasized["prompt_embeds"], plain["prompt_embeds"])


def test_200_token_prompt_with_break_and_weights_sd1(pipes):
    pipe = pipes[Family.SD1]
    body = "b" * 194
    # 3 tokens at 1.3, then 194 tokens: chunks of 75 + 75 + 47, BREAK, then "dog" alone in a 4th chunk
    weighted, _ = prompt_kwargs(pipe, Family.SD1, f"(cat:1.3) {body} BREAK dog", "", 1, steps=20)
    plain, _ = prompt_kwargs(pipe, Family.SD1, f"cat {body} BREAK dog", "", 1, steps=20)
    embeds, unweighted = weighted["prompt_embeds"], plain["prompt_embeds"]
    assert embeds.shape == (1, 4 * 77, 32)
    assert weighted["negative_prompt_embeds"].shape == embeds.shape  # the negative is padded to match
    # chunk 1: tokens 1..3 multiplied by 1.3. A1111 "Original" then rescales the chunk to its unweighted mean,
    # but the tiny encoder's final layer norm (no bias) centres every token on 0, so both means are rounding
    # noise (~1e-8) and their ratio meaningless: the weighted chunk is kept (tests/test_safety_nan.py)
    first = unweighted[:, :77]
    multipliers = torch.ones(1, 77, 1)
    multipliers[:, 1:4] = 1.3
    expected = first * multipliers
    assert torch.allclose(embeds[:, :77], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(embeds[:, :77], first)
    # the other chunks hold no weights: untouched
    assert torch.equal(embeds[:, 77:], unweighted[:, 77:])
    # after BREAK, "dog" is encoded as a prompt of its own
    assert torch.equal(embeds[:, 3 * 77 :], _reference(pipe, Family.SD1, "dog", "")["prompt_embeds"])


def test_long_prompt_sdxl_pools_the_first_chunk(pipes):
    pipe = pipes[Family.SDXL]
    ours, _ = prompt_kwargs(pipe, Family.SDXL, "dog BREAK " + "b" * 100, "", 1, steps=20)
    dog = _reference(pipe, Family.SDXL, "dog", "")
    assert ours["prompt_embeds"].shape == (1, 3 * 77, 32 + 48)
    assert torch.equal(ours["prompt_embeds"][:, :77], dog["prompt_embeds"])
    assert torch.equal(ours["pooled_prompt_embeds"], dog["pooled_prompt_embeds"])


def test_long_prompt_sd3_chunks_clip_and_extends_t5(pipes):
    pipe = pipes[Family.SD3]
    ours, _ = prompt_kwargs(pipe, Family.SD3, "dog BREAK " + "b" * 300, "", 1, steps=20)
    dog = _reference(pipe, Family.SD3, "dog", "")
    # CLIP: "dog" + four chunks of 75; T5: over 256 tokens, so its 512-token form
    assert ours["prompt_embeds"].shape == (1, 5 * 77 + 512, 96)
    assert ours["negative_prompt_embeds"].shape == ours["prompt_embeds"].shape
    assert torch.equal(ours["prompt_embeds"][:, :77], dog["prompt_embeds"][:, :77])
    assert torch.equal(ours["pooled_prompt_embeds"], dog["pooled_prompt_embeds"])
    short, _ = prompt_kwargs(pipe, Family.SD3, "dog", "", 1, steps=20)
    assert short["prompt_embeds"].shape == (1, 77 + 256, 96)


def test_clip_skip_sd1_applies_to_prompt_and_negative_through_the_final_norm(pipes):
    pipe = pipes[Family.SD1]
    ours, _ = prompt_kwargs(pipe, Family.SD1, "a cat", "blurry", 2, steps=20)
    encoder = pipe.text_encoder
    for text, name in (("a cat", "prompt_embeds"), ("blurry", "negative_prompt_embeds")):
        ids = pipe.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            expected = encoder.final_layer_norm(encoder(ids, output_hidden_states=True).hidden_states[-2])
        assert torch.equal(ours[name], expected), name


def test_clip_skip_sdxl_is_diffusers_clip_skip_minus_one_on_both_prompts(pipes):
    pipe = pipes[Family.SDXL]
    ours, _ = prompt_kwargs(pipe, Family.SDXL, "a cat", "blurry", 2, steps=20)
    assert torch.equal(ours["prompt_embeds"], _reference(pipe, Family.SDXL, "a cat", "", clip_skip=1)["prompt_embeds"])
    # diffusers skips layers for the prompt only; A1111 semantics: the negative too
    assert torch.equal(ours["negative_prompt_embeds"], _reference(pipe, Family.SDXL, "blurry", "", clip_skip=1)["prompt_embeds"])


def test_comma_backtracking_moves_the_last_phrase_to_the_next_chunk(pipes):
    tokenizer = pipes[Family.SD1].tokenizer
    comma = tokenizer.get_vocab()[",</w>"]
    near = clip_chunks(tokenizer, parse_attention("a" * 70 + ", " + "b" * 10))
    assert [c.prompt_tokens for c in near.chunks] == [71, 10]  # the chunk ends at the comma
    assert near.chunks[0].ids[71] == comma and near.backtracks == [4]
    far = clip_chunks(tokenizer, parse_attention("a" * 50 + ", " + "b" * 30))
    assert [c.prompt_tokens for c in far.chunks] == [75, 6]  # comma 25 tokens back: no backtracking (limit 20)
    assert near.token_count == 75 + 10 and far.token_count == 75 + 6


def _batch(tensors: dict, images: int) -> dict:
    """Embeddings for `images` images, as prompt_kwargs hands them over (num_images_per_prompt=1)."""
    return {**{k: v.repeat(images, *([1] * (v.ndim - 1))) for k, v in tensors.items()}, "num_images_per_prompt": 1}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.value)
def test_a_batch_equals_diffusers_own_batch(pipes, family):
    pipe = pipes[family]
    run = dict(num_inference_steps=2, guidance_scale=5.0, width=64, height=64, output_type="np")
    seeds = [torch.Generator().manual_seed(s) for s in (1, 2)]
    theirs = pipe("a cat", negative_prompt="blurry", num_images_per_prompt=2, generator=seeds, **run).images
    kwargs, _ = prompt_kwargs(pipe, family, "a cat", "blurry", 1, steps=2, images=2)
    seeds = [torch.Generator().manual_seed(s) for s in (1, 2)]
    ours = pipe(**{**run, "num_images_per_prompt": 2, **kwargs}, generator=seeds).images
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.value)
def test_prompt_editing_switches_embeddings_at_a1111s_step(pipes, family):
    pipe = pipes[family]
    run = dict(num_inference_steps=3, guidance_scale=5.0, width=64, height=64, output_type="np")
    kwargs, schedule = prompt_kwargs(pipe, family, "a [cat:dog:1]", "", 1, steps=3, images=2)
    assert schedule is not None and kwargs["callback_on_step_end_tensor_inputs"] == list(schedule.tensor_inputs)
    assert [schedule.texts_at(s)[0] for s in range(3)] == ["a cat", "a cat", "a dog"]
    edited = pipe(**kwargs, callback_on_step_end=schedule, generator=torch.Generator().manual_seed(1), **run).images

    cat = _reference(pipe, family, "a cat", "")
    dog = _reference(pipe, family, "a dog", "")
    pooled_name = {Family.SDXL: "add_text_embeds", Family.SD3: "pooled_prompt_embeds"}.get(family)

    def switch_after_step_1(_pipe, step, _t, tensors):
        if step != 1:
            return {}
        out = {"prompt_embeds": torch.cat([dog["negative_prompt_embeds"]] * 2 + [dog["prompt_embeds"]] * 2)}
        if pooled_name:
            out[pooled_name] = torch.cat([dog["negative_pooled_prompt_embeds"]] * 2 + [dog["pooled_prompt_embeds"]] * 2)
        return out

    expected = pipe(
        **_batch(cat, 2), callback_on_step_end=switch_after_step_1,
        callback_on_step_end_tensor_inputs=list(schedule.tensor_inputs), generator=torch.Generator().manual_seed(1), **run,
    ).images
    only_cat = pipe(**_batch(cat, 2), generator=torch.Generator().manual_seed(1), **run).images
    assert edited.shape[0] == 2 and np.array_equal(edited, expected)
    assert not np.array_equal(edited, only_cat)
    # the same kwargs and callback serve the next batch of the run
    again = pipe(**kwargs, callback_on_step_end=schedule, generator=torch.Generator().manual_seed(1), **run).images
    assert np.array_equal(again, expected)
