"""Explore: many seeds of one prompt, cheaply (`POST /hayai/v1/jobs {"explore": ...}`, as `hayai explore`),
shown as their contact sheet and one tile per seed; click a seed, then "Refine in Generate" to make that
image again alone, with more steps (the composition comes from the seed, so it carries over)."""

from __future__ import annotations

import gradio as gr

from hayai.server.ui import common
from hayai.server.ui.fields import control
from hayai.server.ui.settings import Settings, fields_from

__all__ = ["ExplorePage", "refined"]


def refined(request: dict | None, seed: int | None) -> dict | None:
    """The request that makes one explored image again alone (its seed, batch of one)."""
    if not request or seed is None:
        return None
    return {**request, "seed": seed, "batch_size": 1, "batch_count": 1}


class ExplorePage:
    def __init__(self, state) -> None:
        self.state = state
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                self.prompt = control("prompt", label="Prompt", lines=2, info=None, elem_id="explore_prompt")
                self.negative = control("negative_prompt", lines=1, info=None, elem_id="explore_negative_prompt")
                self.count = gr.Slider(1, 64, value=16, step=1, label="Seeds to try", elem_id="explore_count",
                                       info="seed, seed+1, ...: few steps here, then refine the one you like")
                self.settings = Settings(state, "explore_")
            with gr.Column(scale=4):
                with gr.Row():
                    self.run = gr.Button("Explore", variant="primary", elem_id="explore_run", scale=2)
                    self.stop = gr.Button("Interrupt", variant="stop", elem_id="explore_interrupt", scale=1)
                self.progress = gr.HTML(common._bar(0, "idle"), elem_id="explore_progress")
                self.sheet = gr.Image(label="Contact sheet", elem_id="explore_sheet", interactive=False, height=360,
                                      format="png")
                self.tiles = gr.Gallery(label="Seeds (click one)", elem_id="explore_tiles", columns=8, height=200,
                                        format="png", object_fit="contain")
                with gr.Row():
                    self.picked_text = gr.Markdown("pick a seed above", elem_id="explore_picked")
                    self.refine = gr.Button("Refine in Generate", elem_id="explore_refine", scale=0, min_width=160)
        self.job = gr.State(None)
        self.request = gr.State(None)  # the explore job's request (its seed drawn)
        self.seeds = gr.State([])
        self.picked = gr.State(None)
        self.components = {"prompt": self.prompt, "negative_prompt": self.negative, **self.settings.components}
        outs = [self.progress, self.sheet, self.tiles, self.job, self.request, self.seeds]
        self.run.click(self._run, inputs={self.count, *self.components.values()}, outputs=outs, show_progress="hidden",
                       concurrency_limit=None)
        self.stop.click(lambda job: common.interrupt(state, job), inputs=self.job, concurrency_limit=None)
        self.tiles.select(_pick, inputs=self.seeds, outputs=[self.picked, self.picked_text])

    def _run(self, values: dict):
        state = self.state
        fields = fields_from(self.components, values)
        fields.pop("batch_count", None)  # the count decides the passes
        body = {"explore": {"request": fields, "count": int(values[self.count])}}
        try:
            job = common.submit_body(state, body)
        except Exception as error:
            yield {self.progress: common._bar(0, f"refused: {common.route_error(error)}")}
            return
        yield {self.job: job.id, self.sheet: None, self.tiles: None, self.request: job.request["request"]}
        for job, live in common.follow(state, job.id):
            yield {self.progress: common.progress_html(state, job, live)}
        result = job.result or {}
        images = [entry for entry in result.get("images", []) if entry.get("path")]
        yield {self.progress: common.progress_html(state, job, None), self.sheet: result.get("contact_sheet"),
               self.tiles: [(entry["path"], f"seed {entry['seed']}") for entry in images] or None,
               self.seeds: [entry["seed"] for entry in images], self.job: None}


def _pick(seeds: list, evt: gr.SelectData):
    if evt.index >= len(seeds):
        return None, "pick a seed above"
    return seeds[evt.index], f"seed **{seeds[evt.index]}**: Refine makes it again alone, with the settings you give it"

