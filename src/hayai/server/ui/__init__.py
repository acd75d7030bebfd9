"""The web UI: Gradio Blocks mounted on `hayai serve`'s FastAPI app at `/`, behind the same Guard (Host and
Origin checks, auth, body cap) as the API. A front end only: every action is a job of the same queue or a
call of the same route function as `/hayai/v1`, in process.

Offline by construction: Gradio's analytics are off, the theme uses the system's fonts (no Google Fonts),
server-side rendering (a Node process) is off, and nothing is fetched at run time.
"""

from __future__ import annotations

import os

__all__ = ["mount_ui", "build_blocks"]

# read by gradio when it is imported: no usage reports, no version check, no telemetry
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_SSR_MODE", "False")

SYSTEM_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]


def build_blocks(state):
    import gradio as gr

    from hayai.server.ui.explore import ExplorePage, refined
    from hayai.server.ui.generate import GeneratePage
    from hayai.server.ui.history import HistoryPage
    from hayai.server.ui.images import ImagesPage
    from hayai.server.ui.queue import QueuePage
    from hayai.server.ui.sweep import SweepPage
    from hayai.server.ui.train import TrainPage

    with gr.Blocks(title="hayai", analytics_enabled=False) as blocks:
        with gr.Tabs(elem_id="pages") as tabs:
            with gr.Tab("Generate", id="generate", elem_id="tab_generate"):
                generate = GeneratePage(state)
            with gr.Tab("img2img / inpaint", id="images", elem_id="tab_images"):
                images = ImagesPage(state)
            with gr.Tab("Sweep", id="sweep", elem_id="tab_sweep"):
                SweepPage(state)
            with gr.Tab("Explore", id="explore", elem_id="tab_explore"):
                explore = ExplorePage(state)
            with gr.Tab("Train", id="train", elem_id="tab_train"):
                TrainPage(state, lora_picker=generate.lora)
            with gr.Tab("Queue", id="queue", elem_id="tab_queue"):
                QueuePage(state)
            with gr.Tab("History", id="history", elem_id="tab_history") as history_tab:
                history = HistoryPage(state)
        generate.to_inpaint.click(lambda path: ({"background": path, "layers": [], "composite": path},
                                                gr.Tabs(selected="images")) if path else (gr.update(), gr.update()),
                                  inputs=generate.selected, outputs=[images.editor, tabs])
        explore.refine.click(lambda request, seed: [*generate._reuse(refined(request, seed)),
                                                    gr.Tabs(selected="generate") if seed is not None else gr.update()],
                             inputs=[explore.request, explore.picked], outputs=[*generate.components.values(), tabs])
        history_tab.select(history.load, inputs=history.search, outputs=[history.gallery, history.runs])
    return blocks


def mount_ui(app, state) -> None:
    """Mount the UI at `/` of `app` (after its API routes, which keep precedence)."""
    import gradio as gr

    from hayai import paths
    from hayai.server.ui.common import CSS

    home = paths.hayai_home()
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    gr.mount_gradio_app(app, build_blocks(state), path="", footer_links=[], ssr_mode=False, theme=theme, css=CSS,
                        allowed_paths=[str(paths.outputs_dir()), str(home / "sweeps"), str(home / "training")],
                        enable_monitoring=False, pwa=False, mcp_server=False)
