"""img2img / inpaint: upload an image (or send one from Generate), paint the mask with the brush (white =
redraw; no stroke = plain img2img), the image-to-image options from the field table. A run is the same
`POST /hayai/v1/jobs` body as the API's, the images sent as base64 exactly as a client sends them."""

from __future__ import annotations

import gradio as gr

from hayai.server.ui import common
from hayai.server.ui.fields import control
from hayai.server.ui.generate import run_generation
from hayai.server.ui.settings import Settings, fields_from

__all__ = ["ImagesPage", "mask_from_layers"]


def mask_from_layers(editor: dict | None):
    """(init image, mask or None) from the editor's value: the mask is every pixel a brush layer painted."""
    from PIL import Image

    if not editor or editor.get("background") is None:
        return None, None
    background = editor["background"].convert("RGB")
    mask = Image.new("L", background.size, 0)
    for layer in editor.get("layers") or []:
        alpha = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a > 0 else 0)
        mask.paste(255, (0, 0), alpha)
    return background, (mask if mask.getbbox() else None)


class ImagesPage:
    def __init__(self, state) -> None:
        self.state = state
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                self.editor = gr.ImageEditor(label="Image — paint the area to redraw", type="pil", image_mode="RGBA",
                                             sources=["upload", "clipboard"], layers=False, elem_id="inpaint_editor",
                                             brush=gr.Brush(default_size=16, colors=["#ffffff"], color_mode="fixed"),
                                             eraser=gr.Eraser(default_size=16), transforms=(), height=420,
                                             canvas_size=(512, 512))
                self.prompt = control("prompt", label="Prompt", lines=2, info=None, elem_id="i2i_prompt")
                self.negative = control("negative_prompt", lines=1, info=None, elem_id="i2i_negative_prompt")
                with gr.Row():
                    self.denoising = control("denoising_strength", value=0.75, elem_id="i2i_denoising_strength")
                    self.resize_mode = control("resize_mode", elem_id="i2i_resize_mode")
                with gr.Accordion("Inpaint options", open=False):
                    with gr.Row():
                        self.mask_blur = control("mask_blur", elem_id="i2i_mask_blur")
                        self.masked_content = control("masked_content", elem_id="i2i_masked_content")
                    with gr.Row():
                        self.only_masked = control("inpaint_only_masked", elem_id="i2i_inpaint_only_masked")
                        self.padding = control("inpaint_padding", elem_id="i2i_inpaint_padding")
                        self.invert = control("mask_invert", elem_id="i2i_mask_invert")
                self.settings = Settings(state, "i2i_")
            with gr.Column(scale=4):
                with gr.Row():
                    self.run = gr.Button("Generate", variant="primary", elem_id="i2i_generate", scale=2)
                    self.stop = gr.Button("Interrupt", variant="stop", elem_id="i2i_interrupt", scale=1)
                self.progress = gr.HTML(common._bar(0, "idle"), elem_id="i2i_progress")
                self.gallery = gr.Gallery(label="Images", elem_id="i2i_gallery", columns=2, height=420, format="png",
                                          object_fit="contain")
                self.infotext = gr.Textbox(label="Infotext", lines=4, elem_id="i2i_infotext")
                self.details = gr.Markdown(elem_id="i2i_details")
        self.job = gr.State(None)
        self.last_request = gr.State(None)
        self.components = {"prompt": self.prompt, "negative_prompt": self.negative, "denoising_strength": self.denoising,
                           "resize_mode": self.resize_mode, "mask_blur": self.mask_blur,
                           "masked_content": self.masked_content, "inpaint_only_masked": self.only_masked,
                           "inpaint_padding": self.padding, "mask_invert": self.invert, **self.settings.components}
        self.selected = gr.State(None)
        outs = (self.progress, self.gallery, self.infotext, self.details, self.job, self.settings.last_seed,
                self.last_request, self.selected)
        self.run.click(lambda values: (yield from run_generation(state, self._body(values), outs)),
                       inputs={self.editor, *self.components.values()}, outputs=list(outs), show_progress="hidden",
                       concurrency_limit=None)
        self.stop.click(lambda job: common.interrupt(state, job, or_current=True), inputs=self.job, concurrency_limit=None)

    def _body(self, values: dict) -> dict:
        fields = fields_from(self.components, values)
        image, mask = mask_from_layers(values.get(self.editor))
        if image is None:
            return {"request": {**fields, "init_image": ""}}  # refused by the API's check, which names the field
        fields["init_image"] = common.png_b64(image)
        if mask is not None:
            fields["mask"] = common.png_b64(mask)
        return {"request": fields}
