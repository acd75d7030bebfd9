"""Sweep axes and plans, without a model: A1111's value syntax, axis names, cells, seeds, errors."""

from __future__ import annotations

import random

import pytest

from hayai.errors import RequestError
from hayai.generation.request import GenerationRequest
from hayai.sweep import SweepPlan, find_axis, make_plan, parse_axis


def values(text):
    return list(parse_axis(text).values)


@pytest.mark.parametrize(("text", "expected"), [
    ("steps=5,10,20", [5, 10, 20]),
    ("steps=5-70 (+5)", list(range(5, 71, 5))),  # the example
    ("steps=1-10 [5]", [1, 3, 5, 7, 10]),  # A1111: int(numpy.linspace(1, 10, 5))
    ("steps=1-5", [1, 2, 3, 4, 5]),  # both ends included
    ("steps=5-1", [5, 4, 3, 2, 1]),
    ("steps=10-1 (-3)", [10, 7, 4, 1]),  # A1111's range(10, 2, -3) would stop at 4
    ("steps=2, 4-6, 20", [2, 4, 5, 6, 20]),
    ("cfg=2,7", [2.0, 7.0]),
    ("cfg=0.5-2 (+0.5)", [0.5, 1.0, 1.5, 2.0]),
    ("cfg=0-1 (+0.1)", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),  # no float drift, end kept
    ("cfg=1-2 [3]", [1.0, 1.5, 2.0]),
    ("seed=-1,5", [-1, 5]),  # -1 is a value, not a range
    ('sampler="Euler a",DPM++ 2M', ["Euler a", "DPM++ 2M"]),
    ("size=512x768, 64X64", [(512, 768), (64, 64)]),
    ('prompt_sr=red,"blue, dark"', ["red", "blue, dark"]),  # CSV quoting keeps a comma inside a value
])
def test_a1111_value_syntax(text, expected):
    assert values(text) == expected


@pytest.mark.parametrize("name", ["cfg", "CFG Scale", "cfg_scale", "cfg-scale", "CFG SCALE", "guidance"])
def test_axis_names_are_ours_or_a1111s_case_insensitive(name):
    assert find_axis(name).key == "cfg_scale"


def test_a1111_labels_name_every_axis():
    assert find_axis("Checkpoint name").key == "model"
    assert find_axis("Prompt S/R").key == "prompt_sr"
    assert find_axis("Schedule type").key == "schedule_type"
    assert find_axis("Batch size").key == "batch_size"
    assert find_axis("plan").key == "strategy"
    assert parse_axis("CFG Scale=2,7").labels == ["CFG Scale: 2", "CFG Scale: 7"]
    assert parse_axis("size=512x768").labels == ["Size: 512x768"]


@pytest.mark.parametrize(("text", "message"), [
    ("stepz=5", r"axis 'stepz' is unknown \(did you mean 'steps'\?\); axes: steps \(Steps\)"),
    ("steps 5,10", r"must be NAME=VALUES, e\.g\. steps=5,10,20"),
    ("steps=ten", r"Steps axis: 'ten' is not an integer or a range like 1-10"),
    ("steps=5-1 (+1)", r"'5-1 \(\+1\)' never reaches 1 from 5 in steps of 1; write the step with the sign"),
    ("steps=1,,2", r"has an empty value"),
    ("cfg=high", r"CFG Scale axis: 'high' is not a number"),
    ("size=512", r"Size axis: '512' is not WIDTHxHEIGHT"),
    ("steps=1-10 [0]", r"asks for 0 values"),
])
def test_bad_axes_name_the_problem_and_the_fix(text, message):
    with pytest.raises(RequestError, match=message):
        parse_axis(text)


BASE = GenerationRequest("a small red circle at the top left on a white background", seed=42)


def test_cells_cover_the_grid_in_order_with_one_seed():
    plan = make_plan(BASE, parse_axis("steps=5,10,20"), parse_axis("cfg=2,7"))
    assert plan.shape() == (3, 2, 1) and len(plan.cells) == 6
    assert [(c.iy, c.ix) for c in plan.cells] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [(c.request.steps, c.request.cfg_scale) for c in plan.cells] == [
        (5, 2.0), (10, 2.0), (20, 2.0), (5, 7.0), (10, 7.0), (20, 7.0)]
    assert {c.request.seed for c in plan.cells} == {42}
    assert plan.cells[4].labels == ("Steps: 10", "CFG Scale: 7")
    assert plan.cells[4].key == "z0-y1-x1" and plan.cells[4].request.filename_pattern == "z0-y1-x1-{seed}"


def test_a_random_seed_is_drawn_once_for_every_cell():
    plan = make_plan(GenerationRequest("a cat"), parse_axis("steps=2,3"), parse_axis("cfg=2,7"), rng=random.Random(1))
    seeds = {c.request.seed for c in plan.cells}
    assert len(seeds) == 1 and seeds.pop() == plan.base.seed >= 0


def test_a_seed_axis_sets_the_seed_and_draws_its_minus_ones():
    plan = make_plan(GenerationRequest("a cat", seed=42), parse_axis("seed=7,-1"), rng=random.Random(1))
    first, second = (c.request.seed for c in plan.cells)
    assert first == 7 and second >= 0 and second != -1
    assert plan.axes["x"].labels[1] == f"Seed: {second}"  # the grid shows the seed that was used


def test_size_lora_weight_prompt_sr_and_strategy_axes():
    base = GenerationRequest("a red circle on a white background", loras=("style:0.3", "detail"), seed=1)
    plan = make_plan(base, parse_axis("size=64x96,128x64"), parse_axis("lora_weight=0.5,1"),
                     parse_axis("prompt_sr=red,blue"))
    cell = [c for c in plan.cells if (c.ix, c.iy, c.iz) == (1, 0, 1)][0]
    assert (cell.request.width, cell.request.height) == (128, 64)
    assert cell.request.loras == ("style:0.5", "detail:0.5")
    assert cell.request.prompt == "a blue circle on a white background"
    strategies = make_plan(base, parse_axis("strategy=auto,cpu-float32+vae-tiling"), strategy="cpu-float32")
    assert [c.strategy for c in strategies.cells] == [None, "cpu-float32+vae-tiling"]


def test_slow_axes_run_outermost():
    plan = make_plan(BASE, parse_axis("steps=2,3"), parse_axis("model=a,b"))
    assert [(c.request.model, c.request.steps) for c in plan.run_order()] == [("a", 2), ("a", 3), ("b", 2), ("b", 3)]
    plan = make_plan(BASE, parse_axis("model=a,b"), parse_axis("steps=2,3"))
    assert [(c.request.model, c.request.steps) for c in plan.run_order()] == [("a", 2), ("a", 3), ("b", 2), ("b", 3)]


def test_plans_survive_a_round_trip_and_fingerprint_what_was_asked():
    plan = make_plan(GenerationRequest("a cat"), parse_axis("size=64x64,64x128"), parse_axis("seed=-1,3"))
    again = SweepPlan.from_dict(plan.to_dict())
    assert again == plan
    other = make_plan(GenerationRequest("a cat"), parse_axis("size=64x64,64x128"), parse_axis("seed=-1,3"))
    assert other.fingerprint == plan.fingerprint  # drawn seeds are not part of what was asked
    assert make_plan(GenerationRequest("a cat"), parse_axis("size=64x64")).fingerprint != plan.fingerprint


@pytest.mark.parametrize(("axes", "base", "message"), [
    (("steps=2,3", "steps=4"), BASE, r"two axes vary 'Steps'"),
    (("size=64x64", "width=64"), BASE, r"a Size axis and a Width/Height axis"),
    (("lora_weight=0.5,1",), BASE, r"LoRA weight axis needs a LoRA to weigh: add --lora NAME"),
    (("prompt_sr=dog,cat",), BASE, r"Prompt S/R axis: the first value 'dog' .* neither the prompt"),
    (("steps=10,0",), BASE, r"sweep cell Steps: 0: steps=0 must be between 1 and 1000"),
    (("sampler=Euler,Eulr",), BASE, r"sweep cell Sampler: Eulr: sampler='Eulr' is unknown"),
])
def test_bad_sweeps_fail_before_any_model_loads(axes, base, message):
    with pytest.raises(RequestError, match=message):
        make_plan(base, *(parse_axis(a) for a in axes))
