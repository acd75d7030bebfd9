"""Generate: prompt and negative with token counts, the shared settings, hires fix, the LoRA picker, the
plan before running, progress with ETA, Interrupt and Skip while running, then the images with their
infotext, timings and peak memory. A run is `POST /hayai/v1/jobs {"request": ...}`, in process."""

from __future__ import annotations

import html

import gradio as gr

from hayai.generation.fields import LATENT_UPSCALERS, PIXEL_UPSCALERS
from hayai.server.images import decode_image
from hayai.server.ui import common
from hayai.server.ui.fields import control
from hayai.server.ui.settings import Settings, fields_from, lora_choices, lora_info, plan_markdown, prompt_report

__all__ = ["GeneratePage", "run_generation", "result_details"]


def result_details(result: dict) -> str:
    """Per-phase timings, peak memory, the strategy and why, as Markdown."""
    timings = " · ".join(f"{phase} {seconds:.2f} s" for phase, seconds in (result.get("timings") or {}).items())
    peak = result.get("peak_memory_bytes")
    lines = [f"**timings**: {timings or '—'}",
             f"**peak memory**: {peak / 2**20:,.0f} MiB ({result.get('peak_memory_kind')})" if peak else "**peak memory**: —",
             f"**strategy**: {result.get('strategy')} — {result.get('plan_reason') or ''}",
             f"**model**: {result.get('model')} [{result.get('model_hash')}] on {result.get('device')} ({result.get('dtype')})"]
    lines += [f"⚠ {w}" for w in result.get("warnings") or []]
    return "\n\n".join(lines)


def run_generation(state, body: dict, outputs):
    """Queue `body` and yield {component: value} as it runs; `outputs` names the page's progress, gallery,
    infotext, details, job id and last-seed components."""
    progress, gallery, infotext, details, job_state, last_seed, last_request, selected = outputs
    try:
        job = common.submit_body(state, body)
    except Exception as error:
        yield {progress: common._bar(0, f"refused: {common.route_error(error)}")}
        return
    yield {job_state: job.id, progress: common.progress_html(state, job, None), gallery: None, infotext: "", details: ""}
    shown = None
    for job, live in common.follow(state, job.id):
        update = {progress: common.progress_html(state, job, live)}
        preview = live.current_image if live is not None else None
        if preview is not None and preview is not shown:  # the live preview, in the gallery until the images come
            update[gallery], shown = [(decode_image(preview, "preview"), "preview")], preview
        yield update
    result = job.result or {}
    images = [(entry["path"], f"seed {entry['seed']}") for entry in result.get("images", []) if entry.get("path")]
    texts = [entry.get("infotext", "") for entry in result.get("images", [])]
    yield {progress: common.progress_html(state, job, None), gallery: images or None,
           infotext: texts[0] if texts else (job.error or ""), details: result_details(result) if result else "",
           last_seed: job.request.get("seed"), last_request: job.request, job_state: None,
           selected: images[0][0] if images else None}  # what "send to inpaint" sends until another is clicked


class GeneratePage:
    def __init__(self, state) -> None:
        self.state = state
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                self.prompt = control("prompt", label="Prompt", lines=3, info=None, elem_id="prompt",
                                      placeholder="a small red circle at the top left on a white background")
                self.negative = control("negative_prompt", lines=2, info=None, elem_id="negative_prompt")
                self.tokens = gr.Markdown(elem_id="prompt_tokens")
                with gr.Row():
                    self.lora = gr.Dropdown(choices=lora_choices(state), value=None, label="LoRA", elem_id="lora_pick",
                                            scale=3, info="from the LoRA catalog; inserts <lora:NAME:W>")
                    self.lora_weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="weight", elem_id="lora_weight", scale=2)
                    self.lora_insert = gr.Button("insert", scale=0, min_width=70, elem_id="lora_insert")
                    self.lora_refresh = gr.Button("↻", scale=0, min_width=40, elem_id="lora_refresh")
                self.lora_about = gr.Markdown()
                self.settings = Settings(state, "")
                with gr.Accordion("Hires fix", open=False):
                    with gr.Row():
                        self.hr_scale = control("hr_scale")
                        self.hr_upscaler = control("hr_upscaler", choices=[*LATENT_UPSCALERS, *PIXEL_UPSCALERS], value="Latent")
                    with gr.Row():
                        self.hr_steps = control("hr_steps")
                        self.denoising = control("denoising_strength", value=None)
            with gr.Column(scale=4):
                with gr.Row():
                    self.generate = gr.Button("Generate", variant="primary", elem_id="generate", scale=2)
                    self.stop = gr.Button("Interrupt", variant="stop", elem_id="interrupt", scale=1)
                    self.skip = gr.Button("Skip", elem_id="skip", scale=1)
                    self.plan_button = gr.Button("Plan", elem_id="plan", scale=1)
                self.progress = gr.HTML(common._bar(0, "idle"), elem_id="progress")
                self.gallery = gr.Gallery(label="Images", elem_id="gallery", columns=2, height=420, format="png", object_fit="contain",
                                          buttons=["download", "fullscreen"])
                with gr.Row():
                    self.to_inpaint = gr.Button("Send to img2img / inpaint", elem_id="send_to_inpaint")
                    self.reuse = gr.Button("Reuse these settings", elem_id="reuse_settings")
                self.infotext = gr.Textbox(label="Infotext", lines=4, elem_id="infotext", buttons=["copy"])
                self.details = gr.Markdown(elem_id="details")
                self.plan = gr.Markdown(elem_id="plan_table")
        self.job = gr.State(None)
        self.last_request = gr.State(None)
        self.selected = gr.State(None)
        self.components = {"prompt": self.prompt, "negative_prompt": self.negative, **self.settings.components,
                           "hr_scale": self.hr_scale, "hr_upscaler": self.hr_upscaler, "hr_steps": self.hr_steps,
                           "denoising_strength": self.denoising}
        self._wire()

    def fields(self, values: dict) -> dict:
        fields = fields_from(self.components, values)
        if not fields.get("hr_scale") or float(fields["hr_scale"]) <= 1:
            for name in ("hr_scale", "hr_upscaler", "hr_steps", "denoising_strength"):
                fields.pop(name, None)
        return fields

    def _wire(self) -> None:
        state, s = self.state, self.settings
        check_inputs = [s.model, self.prompt, self.negative, s.steps]
        for trigger in (self.prompt.input, self.negative.input, s.model.change):
            trigger(lambda *a: prompt_report(state, *a), inputs=check_inputs, outputs=self.tokens,
                    trigger_mode="always_last", show_progress="hidden")
        self.lora_insert.click(lambda p, n, w: f"{p or ''} <lora:{n}:{w:g}>".strip() if n else p,
                               inputs=[self.prompt, self.lora, self.lora_weight], outputs=self.prompt)
        self.lora.change(lambda n: lora_info(state, n), inputs=self.lora, outputs=self.lora_about)
        self.lora_refresh.click(lambda: gr.Dropdown(choices=lora_choices(state)), outputs=self.lora)
        inputs = set(self.components.values())
        outs = (self.progress, self.gallery, self.infotext, self.details, self.job, s.last_seed, self.last_request,
                self.selected)
        self.generate.click(lambda values: (yield from run_generation(state, {"request": self.fields(values)}, outs)),
                            inputs=inputs, outputs=list(outs), show_progress="hidden", concurrency_limit=None)
        self.stop.click(lambda job: common.interrupt(state, job, or_current=True), inputs=self.job, concurrency_limit=None)
        self.skip.click(lambda job: common.interrupt(state, job, skip=True, or_current=True), inputs=self.job,
                        concurrency_limit=None)
        self.plan_button.click(lambda values: self._plan(values), inputs=inputs, outputs=self.plan)
        self.gallery.select(_selected_path, outputs=self.selected)
        self.reuse.click(self._reuse, inputs=self.last_request, outputs=list(self.components.values()))

    def _plan(self, values: dict) -> str:
        from hayai.server.hayai_api import HayaiRequest, plan

        try:
            return plan_markdown(plan(common.as_request(self.state), HayaiRequest.model_validate(self.fields(values))))
        except Exception as error:
            return f"refused: {html.escape(common.route_error(error))}"

    def _reuse(self, request: dict | None):
        if not request:
            return [gr.update() for _ in self.components]
        return [request.get(name) if request.get(name) is not None and name != "model" else gr.update()
                for name in self.components]


def _selected_path(evt: gr.SelectData):
    value = evt.value
    if isinstance(value, dict):
        image = value.get("image") or value
        return image.get("path") or gr.update()
    return gr.update()
