"""Console output shared by the commands: consoles, sizes, and the progress display.

Progress goes to stderr so `--json` output on stdout stays clean for pipes.
"""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

__all__ = ["console", "err_console", "escape", "printable", "format_bytes", "silence_library_progress",
           "progress_printer"]

# no emoji codes: user text such as `[dog:cat:0.5]` must not print as `[dog🐱0.5]`; user text in markup
# goes through `escape` (`[red:blue:0.5]` is not a style)
console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)


def printable(text: str) -> str:
    """`text` without control characters but newline and tab: text read from a file (an image's infotext)
    must not move the cursor, retitle the window or hide lines when printed on a terminal."""
    return "".join(c for c in text if c in "\n\t" or not (c < " " or "\x7f" <= c <= "\x9f"))


def format_bytes(count: int | None) -> str:
    if count is None:
        return "n/a"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def silence_library_progress() -> None:
    """diffusers' and transformers' own tqdm bars would draw over ours."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


@contextmanager
def progress_printer(enabled: bool = True):
    """Yields a callback for `ProgressEvent`s that draws a loading spinner and a steps bar with ETA."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    tasks: dict[str, int] = {}

    def on_event(event) -> None:
        label = {"load": f"loading {escape(str(event.detail))}", "denoise": "denoising", "save": "saving"}.get(event.phase, event.phase)
        if event.phase not in tasks:
            tasks[event.phase] = progress.add_task(label, total=event.total)
        progress.update(tasks[event.phase], completed=event.done, total=event.total, description=label)

    with progress:
        yield on_event
