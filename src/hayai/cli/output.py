"""Console output shared by the commands: consoles, sizes, and the progress display.

Progress goes to stderr so `--json` output on stdout stays clean for pipes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

__all__ = ["console", "err_console", "escape", "printable", "format_bytes", "silence_library_progress",
           "progress_printer", "announce_plan"]

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


LONG_RUN_SECONDS = 60.0  # a run predicted to take longer says so before it starts
WARN_RUN_SECONDS = 1800.0  # ... and past this, warns
LINES_PER_PHASE = 10  # off a terminal, denoising prints about this many lines


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def announce_plan(event, console: Console = err_console) -> None:
    """Before a long run: its predicted time, and a warning past `WARN_RUN_SECONDS`."""
    if event.seconds is None or event.seconds < LONG_RUN_SECONDS:
        return
    text = f"predicted time: ~{_duration(event.seconds)} with {event.detail} (the plan's estimate; Ctrl-C stops it)"
    if event.seconds >= WARN_RUN_SECONDS:
        console.print(f"[yellow]warning:[/] {escape(text)}; a smaller size, fewer steps or `hayai plan` first may be wiser", soft_wrap=True)
    else:
        console.print(escape(text), soft_wrap=True)


def _label(event) -> str:
    return {"load": f"loading {escape(str(event.detail))}", "denoise": "denoising", "save": "saving", "render": "rendering"}.get(event.phase, event.phase)


def _line_printer(clock=time.monotonic):
    """Progress off a terminal (a log file, a pipe): a line per `1/LINES_PER_PHASE` of each phase, with the time."""
    started: dict[str, float] = {}
    printed: dict[str, int] = {}

    def on_event(event) -> None:
        if event.phase == "plan":
            announce_plan(event)
            return
        now = clock()
        started.setdefault(event.phase, now)
        every = max(1, event.total // LINES_PER_PHASE)
        if event.done != event.total and (event.done % every or (event.done == 0 and event.phase != "load")):
            return
        if printed.get(event.phase) == event.done:
            return
        printed[event.phase] = event.done
        elapsed = now - started[event.phase]
        remaining = elapsed / event.done * (event.total - event.done) if 0 < event.done < event.total else 0.0
        left = f", ~{_duration(remaining)} left" if remaining >= 1 else ""
        err_console.print(f"{_label(event)} {event.done}/{event.total} ({_duration(elapsed)}{left})", soft_wrap=True)

    return on_event


@contextmanager
def progress_printer(enabled: bool = True):
    """Yields a callback for `ProgressEvent`s: on a terminal a loading spinner and a steps bar with ETA,
    elsewhere a line every tenth of a phase; either way, a long run's predicted time before it starts."""
    if not enabled:
        yield None
        return
    if not err_console.is_terminal:
        yield _line_printer()
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
        if event.phase == "plan":
            announce_plan(event, progress.console)
            return
        label = _label(event)
        if event.phase not in tasks:
            tasks[event.phase] = progress.add_task(label, total=event.total)
        progress.update(tasks[event.phase], completed=event.done, total=event.total, description=label)

    with progress:
        yield on_event
