"""How every `hayai` command's help reads, set in one place: `App` is `typer.Typer` whose commands use `Command`.

- A flag (`--json`, `--overwrite/--no-overwrite`) shows no `<bool>` tag: the flag is the value.
- A command with many long options (`train lora`) gets click's plain help (`PlainHelp`).
- A default is written one way, as the help texts write theirs: `[20]` at the end of the help, never
  typer's `[default: 20]` beside the texts' own `[the model's native size]`.
"""

from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperGroup

__all__ = ["App", "Command", "PlainHelp"]


def _tidy(param) -> None:
    if param.param_type_name != "option":  # typer ships its own click: no isinstance against `click`
        return
    if param.is_flag:
        param.metavar = ""
        param.show_default = False
        return
    default = param.default
    if param.show_default and default not in (None, "", (), []) and not callable(default):
        if param.help and "\\[" not in param.help:
            param.help = f"{param.help} \\[{default}]"
    param.show_default = False


class Command(TyperCommand):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            _tidy(param)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            _tidy(option)
        return option


class Group(TyperGroup):
    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            _tidy(option)
        return option


class PlainHelp(Command):
    """click's plain help, for a command with many long options: rich's table cuts their names at 80 columns
    (`--gradient-checkp…`), click's list puts the help under a name too long to share its line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rich_markup_mode = None


class App(typer.Typer):
    def __init__(self, *args, cls=None, **kwargs):
        super().__init__(*args, cls=cls or Group, **kwargs)

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or Command, **kwargs)
