"""`hayai history`: every run, from the SQLite log."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Optional

import typer

from hayai.cli.output import console, escape, format_bytes, printable


def history(
    limit: int = typer.Option(20, "--limit", "-l", help="How many runs, newest first."),
    status: Optional[str] = typer.Option(None, "--status", help="ok, error, interrupted or running."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Only runs of this model."),
    search: Optional[str] = typer.Option(None, "--search", help="Only prompts containing this text."),
    since: Optional[str] = typer.Option(None, "--since", help="Only runs since this date (YYYY-MM-DD or ISO time)."),
    fmt: str = typer.Option("table", "--format", help="table, json, or tsv (time, output file, prompt)."),
) -> None:
    """List past runs with their settings, timings and outputs."""
    from hayai.errors import RequestError
    from hayai.store import Store, history_tsv

    if fmt not in ("table", "json", "tsv"):
        raise RequestError(f"--format={fmt!r} must be table, json or tsv")
    since_time = None
    if since:
        try:
            since_time = dt.datetime.fromisoformat(since)
        except ValueError:
            raise RequestError(f"--since={since!r} is not a date; use YYYY-MM-DD or an ISO time") from None
        if since_time.tzinfo is None:
            since_time = since_time.astimezone()  # the user's local time
    runs = Store().runs(limit=limit, status=status, model=model, search=search, since=since_time)
    if fmt == "tsv":
        sys.stdout.write(history_tsv(runs))
        return
    if fmt == "json":
        rows = [
            {
                "id": r.id, "kind": r.kind, "status": r.status, "created_at": r.created_at, "finished_at": r.finished_at,
                "model": r.model, "model_hash": r.model_hash, "device": r.device, "request": r.request, "seeds": r.seeds,
                "timings": r.timings, "peak_memory_bytes": r.peak_memory_bytes, "outputs": r.outputs, "error": r.error,
            }
            for r in runs
        ]
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return
    from rich.table import Table

    from rich.table import Column

    table = Table("id", "time", "status", "model", "images", "total s", "peak", Column("prompt", overflow="fold"), box=None)
    for r in runs:
        total = sum(r.timings.values()) if r.timings else 0.0
        prompt = r.prompt if len(r.prompt) <= 50 else r.prompt[:47] + "..."
        status_text = r.status if r.status == "ok" else f"[red]{escape(r.status)}[/]"
        table.add_row(str(r.id), r.created_at[:19], status_text, escape(r.model), str(len(r.outputs)), f"{total:.2f}",
                      format_bytes(r.peak_memory_bytes), escape(printable(prompt)))
    console.print(table)
