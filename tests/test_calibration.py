"""vitlib.calibration: the temperature fit, clipping, choosing between them, the paired difference, and the plot."""

import math

import numpy as np
import pytest

from vitlib import calibration
from vitlib.calibration import Calibration
from vitlib.metrics import log_loss


def _labels_for(p_true, seed=0):
    return (np.random.default_rng(seed).random(len(p_true)) < p_true).astype(int)


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_fit_temperature_recovers_the_temperature_that_made_the_labels(true_t):
    z = np.random.default_rng(1).normal(0, 2, 20_000)
    labels = _labels_for(calibration.sigmoid(z / true_t))
    assert calibration.fit_temperature(labels, calibration.sigmoid(z)) == pytest.approx(true_t, rel=0.1)


def test_a_model_worse_than_chance_gets_an_infinite_temperature_not_a_negative_one():
    p = np.random.default_rng(2).random(500)
    labels = (p < 0.5).astype(int)  # always wrong
    t = calibration.fit_temperature(labels, p)
    assert t == math.inf
    np.testing.assert_allclose(Calibration(t).apply(p), 0.5)


def test_calibration_apply():
    p = np.array([0.0, 0.001, 0.3, 0.5, 0.8, 1.0])
    np.testing.assert_array_equal(Calibration().apply(p), p)
    clipped = Calibration(clip=0.01).apply(p)
    assert clipped.min() == 0.01 and clipped.max() == 0.99
    sharp = Calibration(temperature=0.5).apply(p[1:-1])
    assert (np.abs(sharp - 0.5) >= np.abs(p[1:-1] - 0.5)).all()
    assert ((sharp > 0.5) == (p[1:-1] > 0.5)).all()  # a temperature never changes the predicted class


def test_an_overconfident_model_is_better_served_by_a_temperature_than_by_any_clip():
    z = np.random.default_rng(3).normal(0, 3, 4_000)
    labels = _labels_for(calibration.sigmoid(z / 3))  # the truth is three times softer than the model says
    table = calibration.compare_calibrations(labels, calibration.sigmoid(z))
    fits_nothing = table[~table["method"].str.startswith("temperature")]
    np.testing.assert_allclose(fits_nothing["held_out_log_loss"], fits_nothing["val_log_loss"])
    best_clip = fits_nothing["held_out_log_loss"].min()
    assert table.loc[table["method"] == "none", "held_out_log_loss"].item() > best_clip  # clipping does help ...
    chosen = calibration.choose_calibration(table)
    assert chosen.temperature == pytest.approx(3, rel=0.15)  # ... a temperature more
    assert table["held_out_log_loss"].min() < best_clip


def test_paired_difference_is_the_loss_gap_and_its_paired_bootstrap_standard_error():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    p_a = np.clip(np.where(labels == 1, 0.7, 0.3) + rng.normal(0, 0.2, 400), 0.01, 0.99)
    p_b = calibration.Calibration(0.8).apply(p_a)
    diff, se = calibration.paired_difference(labels, p_a, p_b)
    assert diff == pytest.approx(log_loss(labels, p_a) - log_loss(labels, p_b))
    picks = rng.integers(0, 400, (4000, 400))  # the images, resampled with replacement, the same for both
    boot = [log_loss(labels[i], p_a[i]) - log_loss(labels[i], p_b[i]) for i in picks]
    assert se == pytest.approx(np.std(boot), rel=0.1)
    assert se < np.std([log_loss(labels[i], p_a[i]) for i in picks])  # pairing removes what they share


def test_the_reliability_counts_at_the_edges_stay_inside_the_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    p = np.clip(rng.beta(0.3, 0.3, 400), 1e-4, 1 - 1e-4)  # most images in the bins at 0 and 1
    y = (rng.random(400) < p).astype(int)
    table = calibration.compare_calibrations(y, p)
    fig = calibration.plot_calibration(y, p, table, calibration.choose_calibration(table))
    ax = fig.axes[2]
    fig.canvas.draw()
    box = ax.get_window_extent()
    for text in ax.texts:
        extent = text.get_window_extent()
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0, text.get_text()
    plt.close(fig)
