"""User text reaches the screen as typed: prompts and paths full of rich markup (`[bold]`, `[a:b:0.5]`) and
emoji codes (`:cat:`) are neither styles nor emoji in any command's output; help reads one way everywhere."""

from __future__ import annotations

import typer

from hayai.cli.main import app
from inprocess import hayai

PROMPT = "a [red:blue:0.5] :cat: [bold]x"


def test_prompts_and_paths_print_as_typed(tmp_path):
    out = tmp_path / "out [bold] :dog:"
    made = hayai("generate", PROMPT, "--steps", "1", "--seed", "3", "-o", out)
    assert f"{out / '00000-3.png'}  seed 3" in made.stdout
    shown = hayai("history").stdout  # a table: the prompt column wraps over lines of its own
    assert "".join(PROMPT.split()) in "".join(shown.split()), shown
    checked = hayai("prompt", "check", PROMPT).stdout
    assert "[red:blue:0.5]" in checked or "'a blue :cat: [bold]x'" in checked
    assert ":cat:" in checked and "🐱" not in checked and "[bold]x" in checked
    assert "🐱" not in shown + made.stdout


def _commands(command, path="hayai"):
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, f"{path} {name}")


def test_help_has_no_type_tags_on_flags_one_default_style_and_whole_option_names():
    for path, _ in _commands(typer.main.get_command(app)):
        text = hayai(*path.split()[1:], "--help").stdout
        assert "<bool>" not in text and "[default:" not in text, path
    train = hayai("train", "lora", "--help").stdout
    assert "--gradient-checkpointing" in train and "--cache-text-embeddings" in train and "…" not in train
    assert "How many runs, newest first. [20]" in hayai("history", "--help").stdout
