"""A1111 prompt syntax: LoRA tags, prompt editing and emphasis, against A1111's own documented results."""

from __future__ import annotations

import pytest

from hayai.errors import RequestError
from hayai.prompts import BREAK, Fragment, parse_attention, parse_prompt
from hayai.prompts.parser import index_at_step

# (prompt, schedule for 10 steps) from the doctests of A1111 modules/prompt_parser.py
# (get_learned_conditioning_prompt_schedules), checked against its lark grammar.
A1111_SCHEDULES = [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", [[s, "a" if s % 2 else "(b:1.1)"] for s in range(1, 11)]),
    ("[a:b:c]", [[10, "[a:b:c]"]]),  # not a number: not prompt editing, used as written
    ("a|b [c:d:5]", [[10, "a|b [c:d:5]"]]),  # `|` outside brackets: A1111's grammar rejects the prompt
]


@pytest.mark.parametrize("prompt, expected", A1111_SCHEDULES, ids=[p for p, _ in A1111_SCHEDULES])
def test_prompt_editing_schedule_matches_a1111(prompt, expected):
    schedule = parse_prompt(prompt).schedule(10)
    assert [[e.end_at_step, e.text] for e in schedule] == expected


# from the doctests of A1111's parse_prompt_attention
A1111_ATTENTION = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
         [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]],
    ),
    ("", [["", 1.0]]),
]


@pytest.mark.parametrize("text, expected", A1111_ATTENTION, ids=[t or "empty" for t, _ in A1111_ATTENTION])
def test_emphasis_matches_a1111(text, expected):
    assert [[f.text, f.weight] for f in parse_attention(text)] == expected


def test_break_splits_fragments_and_eats_surrounding_spaces():
    # A1111 leaves an empty fragment where BREAK meets a bracket; it holds no tokens
    assert parse_attention("a cat BREAK (dog:1.5)") == [Fragment("a cat", 1.0), BREAK, Fragment("", 1.0), Fragment("dog", 1.5)]
    assert parse_attention("BREAK x") == [Fragment("", 1.0), BREAK, Fragment("x", 1.0)]
    assert parse_attention("BREAKFAST") == [Fragment("BREAKFAST", 1.0)]  # only the whole word


def test_break_inside_brackets_still_breaks():
    assert parse_attention("(a BREAK b)") == [Fragment("a", 1.1), BREAK, Fragment("b", 1.1)]


def test_lora_tags_are_removed_and_read():
    parsed = parse_prompt("a cat <lora:style:0.7>, <lora:detail:0.5:1.2> <lyco:old> <lora:named:te=0.3:unet=0.9>")
    assert parsed.text_without_loras == "a cat ,   "
    assert [(t.name, t.te_weight, t.unet_weight) for t in parsed.loras] == [
        ("style", 0.7, 0.7), ("detail", 0.5, 1.2), ("old", 1.0, 1.0), ("named", 0.3, 0.9),
    ]
    assert parsed.loras[0].text == "<lora:style:0.7>"
    assert parsed.warnings == ()


def test_lora_tag_with_a_bad_weight_names_the_tag():
    with pytest.raises(RequestError, match=r"<lora:style:strong>.*'strong' is not a number"):
        parse_prompt("a cat <lora:style:strong>")
    with pytest.raises(RequestError, match="no LoRA name"):
        parse_prompt("<lora::1>")


def test_unsupported_syntax_is_reported_not_silently_dropped():
    parsed = parse_prompt("a cat AND a dog <hypernet:h:1>")
    assert parsed.text_without_loras == "a cat AND a dog "
    assert any("hypernet" in w for w in parsed.warnings)
    assert any("AND" in w for w in parsed.warnings)
    assert any("outside 0..2" in w for w in parse_prompt("<lora:x:2.5>").warnings)
    assert any("tagged 2 times" in w for w in parse_prompt("<lora:x:1> <lora:x:0.5>").warnings)


def test_schedule_step_lookup_follows_a1111_counting():
    schedule = parse_prompt("a [cat:dog:0.5]").schedule(10)
    assert [(e.end_at_step, e.text) for e in schedule] == [(5, "a cat"), (10, "a dog")]
    # A1111 uses the first entry whose end step is >= the 0-based sampling step
    assert [schedule[index_at_step(schedule, s)].text for s in (0, 5, 6, 9)] == ["a cat", "a cat", "a dog", "a dog"]


def test_prompt_without_editing_has_one_entry_and_its_fragments():
    parsed = parse_prompt("(masterpiece:1.2), a cat <lora:x:1>")
    assert not parsed.has_editing
    assert [(e.end_at_step, e.text) for e in parsed.schedule(30)] == [(30, "(masterpiece:1.2), a cat ")]
    assert parsed.fragments() == [Fragment("masterpiece", 1.2), Fragment(", a cat ", 1.0)]


@pytest.mark.parametrize("prompt, steps, plain", [
    ("(masterpiece:1.2), a (red:1.3) circle [blurry] <lora:style:0.8>", 20, "masterpiece, a red circle blurry"),
    ("a cat, <lora:x:1>, sitting", 20, "a cat, sitting"),  # the tag's comma is not doubled
    ("a ((big)) dog BREAK on grass", 20, "a big dog on grass"),
    ("a \\(literal\\) [dog:cat:0.5]", 20, "a (literal) cat"),  # escapes are text; editing: the last step's text
    ("a [dog:cat:30]", 20, "a dog"),  # the switch comes after the last step
    ("[a|b] x", 3, "a x"),  # alternation: the option of the last step
])
def test_plain_text_is_what_a_caption_says(prompt, steps, plain):
    assert parse_prompt(prompt).plain_text(steps) == plain
