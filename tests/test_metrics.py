"""The metrics: log loss (per image and mean), accuracy, confusion, confident mistakes, a run in a row."""

import numpy as np
import pandas as pd
import pytest

from vitlib import metrics


def test_log_loss_is_the_mean_binary_cross_entropy_of_p_dog():
    labels, p = [1, 0, 1, 0], [0.9, 0.2, 0.6, 0.5]
    by_hand = -(np.log(0.9) + np.log(0.8) + np.log(0.6) + np.log(0.5)) / 4
    assert metrics.log_loss(labels, p) == pytest.approx(by_hand, rel=1e-12)
    assert metrics.log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))


def test_log_loss_clips_as_kaggle_does():
    """A confident wrong answer costs -ln(1e-15) = 34.5, not infinity."""
    assert metrics.log_loss([1], [0.0]) == pytest.approx(-np.log(1e-15))
    assert metrics.log_loss([0], [1.0]) == pytest.approx(-np.log(1 - (1 - 1e-15)))  # 1 - 1e-15 rounds in float64
    assert metrics.log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-np.log(1 - 1e-15), abs=1e-12)


def test_accuracy_and_confusion_count_each_case():
    labels = [0, 0, 0, 1, 1, 1, 1]
    p_dog = [0.1, 0.7, 0.5, 0.9, 0.51, 0.2, 0.3]  # 0.5 is a cat: P(dog) must exceed one half
    assert metrics.accuracy(labels, p_dog) == pytest.approx(4 / 7)
    table = metrics.confusion(labels, p_dog)
    assert table.loc["cat", "cat"] == 2 and table.loc["cat", "dog"] == 1
    assert table.loc["dog", "cat"] == 2 and table.loc["dog", "dog"] == 2
    assert table.index.name == "true" and table.columns.name == "predicted"
    assert table.values.sum() == len(labels)


def test_time_to_accuracy_is_the_first_epoch_at_the_target():
    history = pd.DataFrame({"val_acc": [0.6, 0.7, 0.65, 0.8], "elapsed_s": [10.0, 20.0, 30.0, 40.0]})
    assert metrics.time_to_accuracy(history, 0.7) == 20.0
    assert metrics.time_to_accuracy(history, 0.9) is None


def test_image_losses_are_each_images_share_of_the_log_loss():
    labels, p = [1, 0, 1, 0], [0.9, 0.2, 0.0, 1.0]
    losses = metrics.image_losses(labels, p)
    np.testing.assert_allclose(losses[:2], [-np.log(0.9), -np.log(0.8)], rtol=1e-12)
    assert losses[2] == pytest.approx(-np.log(metrics.EPS))  # clipped, not infinite
    assert np.isfinite(losses).all() and (losses > 0).all()
    assert losses.mean() == pytest.approx(metrics.log_loss(labels, p), rel=1e-12)



def test_confident_mistakes_are_the_wrong_predictions_surest_first():
    predictions = pd.DataFrame(
        {"file": list("abcdefg"), "label": [1, 0, 1, 0, 1, 0, 1], "p_dog": [0.9, 0.95, 0.02, 0.6, 0.5, 0.5, 0.3]},
        index=[10, 11, 12, 13, 14, 15, 16],
    )
    # wrong: b (cat at 0.95), c (dog at 0.02), d (cat at 0.6), e (dog at 0.5: P(dog) must exceed one half), g
    mistakes = metrics.confident_mistakes(predictions)
    assert list(mistakes["file"]) == ["c", "b", "g", "d", "e"]
    assert list(mistakes.index) == [12, 11, 16, 13, 14]  # the rows themselves, other columns kept
    assert list(metrics.confident_mistakes(predictions, n=2)["file"]) == ["c", "b"]
    assert metrics.confident_mistakes(predictions[predictions["file"].isin(["a", "f"])]).empty
    raw = predictions.rename(columns={"p_dog": "p_raw"})  # a run's own probabilities, not calibrated
    assert list(metrics.confident_mistakes(raw, n=2, p="p_raw")["file"]) == ["c", "b"]



def history_of(val_loss, val_acc, epoch_s=(2.0, 4.0, 6.0)) -> pd.DataFrame:
    """A history.csv of three epochs, 60 s apart."""
    return pd.DataFrame({"epoch": [1, 2, 3], "val_loss": val_loss, "val_acc": val_acc, "epoch_s": list(epoch_s),
                         "elapsed_s": [60.0, 120.0, 180.0]})



def test_run_summary_reports_the_best_checkpoints_epoch_and_the_time_to_the_seeds_accuracy():
    history = history_of([0.7, 0.5, 0.6], [0.6, 0.7, 0.75])
    assert metrics.run_summary(history) == {
        "epochs": 3,
        "best epoch": 2,  # the lowest validation log loss, not the highest accuracy
        "val acc": 0.7,
        "val log loss": 0.5,
        "train s / epoch": 4.0,
        f"min to {metrics.SEED_ACCURACY}": 2.0,  # the first epoch at 0.683 ended 120 s in
    }



def test_run_summary_times_another_target_and_says_none_when_never_reached():
    history = history_of([0.7, 0.5, 0.6], [0.6, 0.7, 0.75])
    assert metrics.run_summary(history, target=0.75)["min to 0.75"] == 3.0
    assert metrics.run_summary(history, target=0.9)["min to 0.9"] is None
    never = history_of([0.7, 0.69, 0.68], [0.5, 0.5, 0.6])
    assert metrics.run_summary(never)[f"min to {metrics.SEED_ACCURACY}"] is None
