"""Sweep: a base request and up to three axes in A1111's X/Y/Z terms (`steps=4,8`, `CFG Scale=2,7`), run
as a sweep job (`POST /hayai/v1/jobs {"sweep": ...}`); then the grid (each cell labelled with its time),
the time chart and the per-cell table. A sweep interrupted by a restart resumes with its cells kept."""

from __future__ import annotations

import gradio as gr

from hayai.generation.fields import FIELDS
from hayai.server.ui import common
from hayai.server.ui.fields import control
from hayai.server.ui.settings import Settings, fields_from

__all__ = ["SweepPage", "sweep_progress"]

TABLE_COLUMNS = ["cell", "x", "y", "z", "seconds", "seconds_per_step", "peak_memory_bytes", "adherence", "strategy"]
AXES_HELP = "Axes: " + ", ".join(f"`{f.label}`" for f in FIELDS if f.label) + \
            " — each as NAME=VALUES, e.g. `steps=4,8,16` or `CFG Scale=2,7`; ranges as A1111 writes them (`1-9 (+2)`)."


def sweep_progress(state, job, live) -> str:
    """The bar with the cells done and the sweep's own ETA (its last event)."""
    if live is None or job.finished:
        return common.progress_html(state, job, live)
    sweeps = [event for event in list(live.events) if event.get("type") == "sweep"]
    if not sweeps:
        return common.progress_html(state, job, live)
    last = sweeps[-1]
    eta = f" · ETA {last['eta_seconds']:.1f} s" if last.get("eta_seconds") is not None else ""
    return common._bar(live.fraction, f"cells {last['cells_done']}/{last['cells_total']}{eta} · {last.get('detail') or ''}")


class SweepPage:
    def __init__(self, state) -> None:
        self.state = state
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                self.prompt = control("prompt", label="Prompt", lines=2, info=None, elem_id="sweep_prompt")
                self.negative = control("negative_prompt", lines=1, info=None, elem_id="sweep_negative_prompt")
                gr.Markdown(AXES_HELP)
                self.x = gr.Textbox(label="X axis", placeholder="steps=4,8,16", elem_id="sweep_x")
                self.y = gr.Textbox(label="Y axis", placeholder="CFG Scale=2,5,7", elem_id="sweep_y")
                self.z = gr.Textbox(label="Z axis (one grid per value)", elem_id="sweep_z")
                self.settings = Settings(state, "sweep_")
            with gr.Column(scale=4):
                with gr.Row():
                    self.run = gr.Button("Run sweep", variant="primary", elem_id="sweep_run", scale=2)
                    self.stop = gr.Button("Interrupt", variant="stop", elem_id="sweep_interrupt", scale=1)
                self.progress = gr.HTML(common._bar(0, "idle"), elem_id="sweep_progress")
                self.grids = gr.Gallery(label="Grid (each cell's time in its label) and chart", elem_id="sweep_grid",
                                        columns=1, height=520, format="png", object_fit="contain",
                                        buttons=["download", "fullscreen"])
                self.table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, elem_id="sweep_table", wrap=True)
                self.folder = gr.Markdown(elem_id="sweep_folder")
        self.job = gr.State(None)
        self.components = {"prompt": self.prompt, "negative_prompt": self.negative, **self.settings.components}
        outs = [self.progress, self.grids, self.table, self.folder, self.job]
        self.run.click(self._run, inputs={self.x, self.y, self.z, *self.components.values()}, outputs=outs,
                       show_progress="hidden", concurrency_limit=None)
        self.stop.click(lambda job: common.interrupt(state, job), inputs=self.job, concurrency_limit=None)

    def _run(self, values: dict):
        state = self.state
        body = {"sweep": {"request": fields_from(self.components, values),
                          **{name: values[box] for name, box in (("x", self.x), ("y", self.y), ("z", self.z))
                             if values.get(box)}}}
        try:
            job = common.submit_body(state, body)
        except Exception as error:
            yield {self.progress: common._bar(0, f"refused: {common.route_error(error)}")}
            return
        yield {self.job: job.id, self.grids: None, self.table: None, self.folder: ""}
        for job, live in common.follow(state, job.id):
            yield {self.progress: sweep_progress(state, job, live)}
        result = job.result or {}
        pictures = [path for path in result.get("files", []) if path.endswith(".png")]
        grids = sorted(pictures, key=lambda path: path.endswith("chart.png"))  # the grids first, then the chart
        rows = [[row.get(column, "") for column in TABLE_COLUMNS] for row in result.get("rows", [])]
        yield {self.grids: grids or None, self.table: rows or None, self.job: None,
               self.folder: f"folder: `{result.get('folder', '')}` · cells run {result.get('ran')}, "
                            f"resumed {result.get('resumed')}" if result else ""}

