"""What training shows a user: sample grids that say what they show, a loss chart whose legend hides no
curve, and a word on why the validation loss sits at another level than the training loss."""

from __future__ import annotations

import numpy as np
from PIL import Image

from hayai.cli.train import validation_note
from hayai.training.samples import LABEL_PX, labelled_grid, loss_figure


def test_sample_grids_carry_their_title_and_each_row_its_prompt():
    tile = Image.new("RGB", (64, 64), "gray")
    grid = np.asarray(labelled_grid([[tile, tile], [tile, tile]], 64, 64, "my-lora, step 30", ["a red circle", "a cube"]))
    assert grid.shape == (LABEL_PX + 2 * (64 + LABEL_PX), 128, 3)
    bands = [grid[:LABEL_PX], grid[LABEL_PX:2 * LABEL_PX], grid[2 * LABEL_PX + 64:3 * LABEL_PX + 64]]
    assert all((band < 128).any() for band in bands)  # dark text on each white band
    assert (grid[2 * LABEL_PX:2 * LABEL_PX + 64] == 128).all()  # the images themselves are untouched


def test_the_loss_legend_sits_outside_the_curves():
    losses = [(step, 1.0 + 0.5 * np.sin(step)) for step in range(1, 50)]
    figure = loss_figure(losses, [(0, 3.4), (25, 3.3), (49, 3.35)], title="x: loss")
    figure.canvas.draw()
    [axes] = figure.axes
    legend, box = axes.get_legend().get_window_extent(), axes.get_window_extent()
    assert not legend.overlaps(box)


def test_the_summary_says_why_validation_and_training_losses_differ():
    note = validation_note({"min_snr_gamma": 5.0})
    assert "held-out images, with fixed noise at 4 timesteps" in note and "weighted by min-SNR (gamma 5" in note
    assert "min-SNR" not in validation_note({"min_snr_gamma": None})
