"""The shared plotting helpers (vitlib/plots.py): what they draw, checked without looking at pixels."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd

from vitlib import plots


def test_as_image_maps_every_input_range_to_zero_one():
    import numpy as np
    import torch

    for x in (torch.full((3, 4, 4), 255, dtype=torch.uint8), torch.ones(3, 4, 4), np.ones((4, 4, 3))):
        assert plots.as_image(x).shape == (4, 4, 3) and plots.as_image(x).max() == 1.0
    assert plots.as_image(-torch.ones(3, 4, 4)).max() == 0.0  # [-1, 1], the normalised range


def test_show_images_titles_each_image_and_names_the_source():
    import numpy as np

    fig = plots.show_images([np.zeros((8, 8, 3))] * 3, ["a", "b\nc", "d"], source="SYNTHETIC sample", cols=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["a", "b\nc", "d"] and fig._suptitle.get_text() == "SYNTHETIC sample"
    assert len(fig.axes) == 4  # a 2x2 grid, the last cell empty


def test_training_curves_tick_whole_epochs_only():
    history = pd.DataFrame({"epoch": range(1, 4), "train_loss": 0.5, "val_loss": 0.4, "train_acc": 0.7,
                            "val_acc": 0.8})
    fig = plots.plot_history({"cpu": history}, source="test")
    fig.canvas.draw()
    for ax in fig.axes[:2]:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks  # not 2.5, 5.0


