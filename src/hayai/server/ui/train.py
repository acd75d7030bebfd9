"""Train: the dataset doctor's findings (GET /hayai/v1/datasets/{name}/check), a form of TrainConfig's
fields with their help and defaults, then a training job (`POST /hayai/v1/jobs {"train": ...}`) with its
live loss and validation curve, the sample grids as checkpoints land, resume, and the finished LoRA in
the Generate page's picker."""

from __future__ import annotations

import html

import gradio as gr

from hayai.server.ui import common
from hayai.server.ui.fields import train_control

__all__ = ["TrainPage", "loss_series", "loss_picture", "dataset_report"]

FORM = ("output_name", "method", "trigger_word", "resolution", "steps", "rank", "learning_rate", "batch_size", "seed",
        "checkpoint_every", "validation_every", "sample_every", "distill_steps")


def dataset_names(state) -> list[str]:
    from hayai.server.hayai_api import datasets

    return [entry["name"] for entry in datasets()]


def dataset_report(name: str | None, resolution, trigger_word: str | None) -> str:
    from hayai.server.hayai_api import check_dataset_route

    if not name:
        return "choose a dataset (a folder of images with captions in `$HAYAI_HOME/datasets`)"
    try:
        report = check_dataset_route(name, int(resolution) if resolution else None, trigger_word or None)
    except Exception as error:
        return f"⚠ {html.escape(common.route_error(error))}"
    lines = [f"**{report['images']} images** ({report['usable']} readable) · sizes {report['sizes']} · "
             f"captions: {report['captions']}"]
    lines += [f"- **{f['level']}** `{f['code']}`: {html.escape(f['message'])}" for f in report["findings"]]
    if not report["findings"]:
        lines.append("- no findings: the dataset looks ready")
    return "\n".join(lines)


def loss_series(events: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(training losses, validation losses) as (step, value) from a training job's events so far."""
    losses, validation = [], []
    for event in events:
        if event.get("type") == "train":
            if event.get("loss") is not None:
                losses.append((event["step"], event["loss"]))
            if event.get("val_loss") is not None:
                validation.append((event["step"], event["val_loss"]))
    return losses, validation


def loss_picture(events: list[dict]):
    """The live loss chart: the same figure `hayai train lora` saves as loss.png, drawn from the events so far."""
    from PIL import Image

    from hayai.training.samples import loss_figure

    losses, validation = loss_series(events)
    if not losses:
        return None
    figure = loss_figure(losses, validation, title="loss")
    figure.canvas.draw()
    return Image.frombuffer("RGBA", figure.canvas.get_width_height(), figure.canvas.buffer_rgba()).convert("RGB")


class TrainPage:
    def __init__(self, state, lora_picker=None) -> None:
        self.state, self.lora_picker = state, lora_picker
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                with gr.Row():
                    self.dataset = gr.Dropdown(choices=dataset_names(state), value=None, label="Dataset",
                                               elem_id="train_dataset", scale=3,
                                               info="a folder of $HAYAI_HOME/datasets (images with .txt captions)")
                    refresh = gr.Button("↻", scale=0, min_width=40, elem_id="train_refresh")
                    self.check = gr.Button("Check", scale=0, min_width=70, elem_id="train_check")
                self.report = gr.Markdown(elem_id="train_report")
                self.controls = {name: train_control(name) for name in FORM}
                self.resume = gr.Checkbox(False, label="resume", elem_id="train_resume",
                                          info="continue the run folder's latest checkpoint")
            with gr.Column(scale=4):
                with gr.Row():
                    self.start = gr.Button("Start training", variant="primary", elem_id="train_start", scale=2)
                    self.stop = gr.Button("Interrupt (saves a checkpoint)", variant="stop", elem_id="train_interrupt", scale=1)
                self.progress = gr.HTML(common._bar(0, "idle"), elem_id="train_progress")
                self.chart = gr.Image(None, label="loss", elem_id="train_chart", type="pil", interactive=False,
                                      height=300, format="png")
                self.samples = gr.Gallery(label="Sample grids and charts", elem_id="train_samples", columns=2,
                                          height=320, format="png", object_fit="contain")
                self.summary = gr.Markdown(elem_id="train_summary")
        self.job = gr.State(None)
        refresh.click(lambda: gr.Dropdown(choices=dataset_names(state)), outputs=self.dataset)
        check_inputs = [self.dataset, self.controls["resolution"], self.controls["trigger_word"]]
        for trigger in (self.check.click, self.dataset.change):
            trigger(dataset_report, inputs=check_inputs, outputs=self.report)
        outs = [self.progress, self.chart, self.samples, self.summary, self.job]
        if lora_picker is not None:
            outs.append(lora_picker)
        self.start.click(self._run, inputs={self.dataset, self.resume, *self.controls.values()}, outputs=outs,
                         show_progress="hidden", concurrency_limit=None)
        self.stop.click(lambda job: common.interrupt(state, job), inputs=self.job, concurrency_limit=None)

    def _body(self, values: dict) -> dict:
        train = {"dataset": values.get(self.dataset) or "", "resume": bool(values.get(self.resume))}
        for name, box in self.controls.items():
            value = values.get(box)
            if value is None or value == "":
                continue
            train[name] = int(value) if getattr(box, "precision", None) == 0 else value
        return {"train": train}

    def _run(self, values: dict):
        from hayai.server.ui.settings import lora_choices

        state = self.state
        try:
            job = common.submit_body(state, self._body(values))
        except Exception as error:
            yield {self.progress: common._bar(0, f"refused: {common.route_error(error)}")}
            return
        yield {self.job: job.id, self.samples: None, self.summary: ""}
        shown = 0
        for job, live in common.follow(state, job.id):
            update = {self.progress: common.progress_html(state, job, live)}
            if live is not None and len(loss_series(live.events)[0]) != shown:  # a new loss: draw the chart again
                shown = len(loss_series(live.events)[0])
                update[self.chart] = loss_picture(list(live.events))
            yield update
        result = job.result or {}
        files = result.get("files") or {}
        pictures = [path for path in files.values() if str(path).endswith(".png")]
        losses = result.get("losses") or []
        last = f"{losses[-1][1]:.4f}" if losses else "—"
        summary = (f"**{result.get('status')}** at step {result.get('step')}/{result.get('total_steps')} · "
                   f"LoRA: `{result.get('lora_path')}` · last loss {last}") if result else html.escape(job.error or "")
        final = {self.progress: common.progress_html(state, job, None), self.samples: pictures or None, self.job: None,
                 self.summary: summary}
        if self.lora_picker is not None:
            final[self.lora_picker] = gr.Dropdown(choices=lora_choices(state))
        yield final

