"""History: a searchable gallery of every run the store logged (GET /hayai/v1/history), each image with the
settings it was made with; click one to read them, download it, or move its run's images to the trash
(DELETE /hayai/v1/history/{id}: moved, never deleted)."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from hayai.server.ui import common

__all__ = ["HistoryPage", "history_items"]


def history_items(state, search: str | None) -> tuple[list, list[dict]]:
    """Gallery items (path, caption) and, in the same order, the run each image belongs to."""
    from hayai.server.hayai_api import history
    from hayai.store.trash import in_trash

    items, runs = [], []
    for run in history(common.as_request(state), search=search or None, limit=200):
        for output in run.get("outputs") or []:
            path = Path(output)
            if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") and path.is_file() and not in_trash(path):
                items.append((output, f"#{run['id']} {run['status']} · {(run['request'].get('prompt') or '')[:40]}"))
                runs.append(run)
    return items, runs


def _settings(run: dict) -> str:
    timings = " · ".join(f"{k} {v:.2f} s" for k, v in (run.get("timings") or {}).items())
    peak = run.get("peak_memory_bytes")
    return (f"**run {run['id']}** ({run['kind']}, {run['status']}) · {run['created_at'][:19].replace('T', ' ')} · "
            f"{run['model']} on {run['device']}\n\n**timings**: {timings or '—'} · **peak memory**: "
            f"{f'{peak / 2**20:,.0f} MiB' if peak else '—'} · **seeds**: {run.get('seeds')}\n\n"
            f"```json\n{json.dumps(run['request'], indent=1)}\n```")


def _picked(runs: list, evt: gr.SelectData) -> tuple[str, int | None]:
    if evt.index >= len(runs):
        return "", None
    return _settings(runs[evt.index]), runs[evt.index]["id"]


class HistoryPage:
    def __init__(self, state) -> None:
        self.state = state
        with gr.Row():
            self.search = gr.Textbox(label="Search prompts", elem_id="history_search", scale=4)
            self.refresh = gr.Button("↻ refresh", elem_id="history_refresh", scale=1)
        self.gallery = gr.Gallery(label="Runs", elem_id="history_gallery", columns=6, height=460, format="png",
                                  buttons=["download", "fullscreen"])
        with gr.Row():
            self.settings = gr.Markdown(elem_id="history_settings")
            self.trash = gr.Button("Move this run's images to the trash", elem_id="history_trash", scale=0,
                                   variant="stop")
        self.runs = gr.State([])
        self.picked = gr.State(None)
        for trigger in (self.refresh.click, self.search.submit):
            trigger(self.load, inputs=self.search, outputs=[self.gallery, self.runs])
        self.gallery.select(_picked, inputs=self.runs, outputs=[self.settings, self.picked])
        self.trash.click(self.move_to_trash, inputs=[self.picked, self.search],
                         outputs=[self.gallery, self.runs, self.settings, self.picked])

    def move_to_trash(self, run_id: int | None, search: str | None):
        from hayai.server.hayai_api import trash_run_route

        if run_id is None:
            return gr.skip(), gr.skip(), "pick an image first", None
        moved = trash_run_route(common.as_request(self.state), run_id)["moved"]
        items, runs = history_items(self.state, search)
        folder = Path(moved[0]).parent if moved else None
        return items, runs, f"moved {len(moved)} image(s) of run {run_id} to `{folder}`", None

    def load(self, search: str | None):
        items, runs = history_items(self.state, search)
        return items, runs
