"""The data exploration of notebook 01 (vitlib/explore.py): image headers, the odd ones out, the per-class plots."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vitlib import data, explore


def extracted(tmp_path, names):
    """A DogsVsCats over a folder holding these 12x9 JPEGs."""
    root = tmp_path / "ds"
    (root / "train").mkdir(parents=True)
    for n in names:
        Image.new("RGB", (12, 9), (200, 80, 40)).save(root / "train" / n, "JPEG")
    return data.DogsVsCats("ds", "local", root, root / "train", None, None)


def test_image_info_reads_headers_and_marks_unreadable_files(tmp_path):
    ds = extracted(tmp_path, ["cat.1.jpg", "dog.1.jpg"])
    (ds.train_dir / "dog.1.jpg").write_bytes(b"not a jpeg")
    info = explore.image_info(ds, data.index_images(ds), workers=2).set_index("file")
    assert info.loc["train/cat.1.jpg", ["width", "height", "mode"]].tolist() == [12, 9, "RGB"]
    assert info.loc["train/cat.1.jpg", "aspect"] == pytest.approx(12 / 9)
    assert info.loc["train/dog.1.jpg", "mode"] == "unreadable"
    assert np.isnan(info.loc["train/dog.1.jpg", "aspect"])


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


def test_the_test_photos_are_an_outline_over_the_filled_classes():
    frame = pd.DataFrame({"brightness": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                          "class": ["cat", "cat", "dog", "dog", "test", "test"]})
    fig = explore.plot_by_class(frame, ["brightness"])
    filled = {p.get_label(): p.get_fill() for p in fig.axes[0].patches if not p.get_label().startswith("_")}
    assert filled == {"cat": True, "dog": True, "test": False}
    plt.close(fig)


def test_an_image_the_cache_skips_is_unreadable_here_too_and_shown_grey(tmp_path, monkeypatch):
    """One definition of unreadable (cache.UNREADABLE): before, a decompression bomb crashed image_info and
    show_files while the cache skipped it."""
    ds = extracted(tmp_path, ["cat.1.jpg", "dog.1.jpg"])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # 12x9 = 108 px is over twice this: Pillow refuses to open it
    info = explore.image_info(ds, data.index_images(ds), workers=2)
    assert set(info["mode"]) == {"unreadable"}
    fig = explore.show_files(ds, ["train/cat.1.jpg"], source="test")
    assert fig.axes[0].images[0].get_array().shape == (8, 8, 3)  # the grey square
    plt.close(fig)
