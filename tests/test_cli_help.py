"""Every help text reaches the screen as written: typer renders help through rich markup, which silently
drops `[word ...]` (it takes it for a style tag: "Width [the model's native size]." printed as "Width .") and
turns `:name:` into an emoji ("[a:b:0.5]" printed as "[a🅱0.5]")."""

from __future__ import annotations

import pytest
import typer
from rich.text import Text

from hayai.cli.main import app


def _commands(command, path: str = "hayai"):
    yield path, command
    if hasattr(command, "commands"):  # a group (typer ships its own click, so no isinstance)
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, f"{path} {name}")


def _texts():
    for path, command in _commands(typer.main.get_command(app)):
        if command.help:
            yield f"{path}: description", command.help
        for param in command.params:
            if getattr(param, "help", None):
                yield f"{path} {param.name}", param.help


TEXTS = list(_texts())


def test_the_walk_finds_the_help_of_every_command():
    names = {name for name, _ in TEXTS}
    assert {"hayai generate width", "hayai eval adherence model", "hayai train lora: description"} <= names
    assert len(TEXTS) > 150


@pytest.mark.parametrize(("where", "text"), TEXTS, ids=[name for name, _ in TEXTS])
def test_help_text_survives_rich_markup(where, text):
    shown = Text.from_markup(text).plain
    assert shown == text.replace("\\[", "["), f"{where}: rich changes {text!r} (a [tag] is dropped unless written \\\\[, :name: becomes an emoji)"
