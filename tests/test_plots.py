"""The shared plotting helpers: what they pick and draw, checked without looking at pixels."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

from vitlib import explore, plots


def _stats(widths, heights):
    n = len(widths)
    return pd.DataFrame({"file": [f"train/cat.{i}.jpg" for i in range(n)], "width": widths, "height": heights,
                         "aspect": [w / h for w, h in zip(widths, heights, strict=True)],
                         "bytes": range(1000, 1000 + n), "brightness": [i / n for i in range(n)],
                         "contrast": [0.5] * (n - 1) + [0.1], "colourfulness": [0.3] * n})


def test_odd_ones_out_picks_the_extremes_and_skips_ties():
    odd = explore.odd_ones_out(_stats([200] * 10, [200] * 10), per=2)
    why = odd.groupby("why", sort=False)["file"].apply(list).to_dict()
    # colourfulness and the sizes tie everywhere: skipped; the others in ODD_CRITERIA's order
    assert list(why) == ["darkest", "brightest", "lowest contrast", "smallest file"]
    assert why["darkest"] == ["train/cat.0.jpg", "train/cat.1.jpg"]
    assert why["brightest"] == ["train/cat.9.jpg", "train/cat.8.jpg"]


def test_an_image_extreme_in_two_ways_is_shown_once_and_the_grid_has_no_gaps():
    odd = explore.odd_ones_out(_stats([200] * 10, [200] * 10), per=2)
    assert odd["file"].is_unique
    assert odd.groupby("why", sort=False).size().tolist() == [2, 2, 2, 2]  # every criterion fills its row
    # cat.9 is the brightest and also the lowest in contrast: shown once, as the brightest; the lowest-contrast
    # row takes the next ones (all others tie at 0.5: the first not yet shown), and so does the smallest-file row
    by_why = odd.groupby("why", sort=False)["file"].apply(list)
    assert by_why["lowest contrast"] == ["train/cat.2.jpg", "train/cat.3.jpg"]
    assert by_why["smallest file"] == ["train/cat.4.jpg", "train/cat.5.jpg"]


def test_odd_ones_out_finds_elongated_images_either_way_round():
    stats = _stats([200, 400, 100, 210], [200, 90, 200, 200])
    by = {why: explore.odd_ones_out(stats, per=2, criteria=[(why, column, lowest)])["file"].tolist()
          for why, column, lowest in explore.ODD_CRITERIA if why in ("most elongated", "fewest pixels")}
    assert by["most elongated"] == ["train/cat.1.jpg", "train/cat.2.jpg"]  # 400x90 and 100x200
    assert by["fewest pixels"] == ["train/cat.2.jpg", "train/cat.1.jpg"]


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


def test_the_test_photos_are_an_outline_over_the_filled_classes():
    frame = pd.DataFrame({"brightness": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                          "class": ["cat", "cat", "dog", "dog", "test", "test"]})
    fig = explore.plot_by_class(frame, ["brightness"])
    filled = {p.get_label(): p.get_fill() for p in fig.axes[0].patches if not p.get_label().startswith("_")}
    assert filled == {"cat": True, "dog": True, "test": False}
    plt.close(fig)
