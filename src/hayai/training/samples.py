"""Sample images during training: fixed prompts and seeds, one grid per checkpoint, and the loss chart.

Samples are made the way `hayai generate` makes images (the same prompt encoding, the family's default
sampler, a CPU generator per image seeded with its seed: `generation.execute.pipeline_kwargs`), with the
LoRA layers live in the pipeline, so a grid at step N shows what the LoRA file of step N generates.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["loss_chart", "loss_figure", "sample_grid", "labelled_grid"]


def sample_grid(pipe, family, prompts: list[str], seeds: list[int], *, steps: int, cfg: float, width: int, height: int,
                caption: str = "", sampler: str | None = None):
    """A PIL grid: one row per prompt, one column per seed, labelled on the image (a title band with
    `caption`, a band above each row with its prompt) and in its PNG text. `sampler`: an A1111 name
    (None: the family's default)."""
    import torch
    from PIL import PngImagePlugin

    from hayai.generation.encoding import prompt_kwargs
    from hayai.generation.execute import pipeline_kwargs
    from hayai.generation.request import GenerationRequest
    from hayai.generation.samplers import build_scheduler, default_sampler
    from hayai.models.families import FAMILY_INFO

    flow = FAMILY_INFO[family].flow_matching
    original = pipe.scheduler
    pipe.scheduler = build_scheduler(sampler or default_sampler(flow), "Automatic", dict(original.config), flow)
    rows = []
    try:
        with torch.no_grad():
            for prompt in prompts:
                request = GenerationRequest(prompt, steps=steps, cfg_scale=cfg, width=width, height=height, seed=seeds[0])
                kwargs = pipeline_kwargs(request, list(seeds))
                for replaced in ("prompt", "negative_prompt", "clip_skip"):
                    kwargs.pop(replaced, None)
                embeds, _ = prompt_kwargs(pipe, family, prompt, "", 1, steps=steps, images=len(seeds))
                rows.append(pipe(**{**kwargs, **embeds}, output_type="pil").images)
    finally:
        pipe.scheduler = original
    grid = labelled_grid(rows, width, height, caption, prompts)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", caption + "\n" + "\n".join(f"row {i + 1}: {p}" for i, p in enumerate(prompts))
                  + f"\ncolumns: seeds {', '.join(map(str, seeds))}")
    grid.info["pnginfo"] = info
    return grid


LABEL_PX = 14  # the height of a text band: PIL's default bitmap font is 11 px tall


def labelled_grid(rows, width: int, height: int, title: str, labels: list[str]):
    """`rows` of images pasted in a grid under a `title` band, each row under a band with its label
    (cut to fit the grid's width)."""
    from PIL import Image, ImageDraw

    columns = max(len(images) for images in rows)
    grid = Image.new("RGB", (width * columns, LABEL_PX + len(rows) * (height + LABEL_PX)), "white")
    draw = ImageDraw.Draw(grid)
    fits = max(1, grid.width // 6)  # the default font is 6 px wide per character

    def label(text: str, top: int) -> None:
        draw.text((2, top + 1), text if len(text) <= fits else text[: fits - 3] + "...", fill="black")

    label(title, 0)
    for r, images in enumerate(rows):
        top = LABEL_PX + r * (height + LABEL_PX)
        label(labels[r], top)
        for c, image in enumerate(images):
            grid.paste(image, (c * width, top + LABEL_PX))
    return grid


def loss_chart(path: Path, losses: list[tuple[int, float]], validation: list[tuple[int, float]], *, title: str) -> Path:
    """Training loss (raw and smoothed) and validation loss against the step, as a PNG."""
    figure = loss_figure(losses, validation, title=title)
    path = Path(path)
    partial = path.with_name(path.name + ".partial.png")
    figure.savefig(partial, format="png")
    partial.replace(path)
    return path


def loss_figure(losses: list[tuple[int, float]], validation: list[tuple[int, float]], *, title: str):
    """The figure `loss_chart` saves; the legend sits under the axes, where it hides no curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if losses:
        steps, values = zip(*losses)
        axes.plot(steps, values, color="#9ecae1", linewidth=0.8, label="training loss")
        smooth, average = [], None
        for value in values:  # exponential moving average, as loggers show it
            average = value if average is None else 0.9 * average + 0.1 * value
            smooth.append(average)
        axes.plot(steps, smooth, color="#08519c", linewidth=1.6, label="training loss (smoothed)")
    if validation:
        steps, values = zip(*validation)
        axes.plot(steps, values, "o-", color="#d94801", linewidth=1.6, markersize=4, label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if losses or validation:
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False, fontsize="small")
    figure.tight_layout()
    return figure
