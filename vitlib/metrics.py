"""What the competition scores (log loss of P(dog)) and what people read (accuracy)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .data import CLASSES

EPS = 1e-15  # Kaggle clips predictions to [EPS, 1 - EPS] before scoring
SEED_ACCURACY = 0.683  # the seed notebook's final validation accuracy: the bar every recipe here is timed to


def image_losses(labels, p_dog, eps: float = EPS) -> np.ndarray:
    """Each image's share of the log loss: -log of the probability given to its true class, clipped as Kaggle does."""
    y, p = np.asarray(labels), np.clip(np.asarray(p_dog, dtype=np.float64), eps, 1 - eps)
    return -np.log(np.where(y == 1, p, 1 - p))


def log_loss(labels, p_dog, eps: float = EPS) -> float:
    """The competition's metric: the mean of image_losses (binary cross-entropy of P(dog))."""
    return float(np.mean(image_losses(labels, p_dog, eps)))


def accuracy(labels, p_dog) -> float:
    return float(np.mean((np.asarray(p_dog) > 0.5) == (np.asarray(labels) == 1)))


def confusion(labels, p_dog) -> pd.DataFrame:
    """Counts, rows the true class, columns the predicted one."""
    y = np.asarray(labels).astype(int)
    pred = (np.asarray(p_dog) > 0.5).astype(int)
    m = np.zeros((2, 2), int)
    np.add.at(m, (y, pred), 1)
    return pd.DataFrame(m, index=pd.Index(CLASSES, name="true"), columns=pd.Index(CLASSES, name="predicted"))


def time_to_accuracy(history: pd.DataFrame, target: float) -> float | None:
    """Seconds from the start (caching included) to the first epoch at `target` validation accuracy."""
    hit = history[history["val_acc"] >= target]
    return None if hit.empty else float(hit["elapsed_s"].iloc[0])


def confident_mistakes(predictions: pd.DataFrame, n: int = 12, p: str = "p_dog") -> pd.DataFrame:
    """The `n` wrong predictions the model was surest of (columns label and `p`, the P(dog): p_dog calibrated, p_raw
    the model's own), surest first."""
    wrong = predictions[(predictions[p] > 0.5) != (predictions["label"] == 1)]
    confidence = (wrong[p] - 0.5).abs()
    return wrong.loc[confidence.sort_values(ascending=False).index[:n]]


def run_summary(history: pd.DataFrame, target: float = SEED_ACCURACY) -> dict:
    """One run in a row: the epoch of lowest validation log loss (the best checkpoint) and its accuracy,
    the mean training time per epoch, and the time to `target` accuracy (None if never reached)."""
    best = history.loc[history["val_loss"].idxmin()]
    return {
        "epochs": len(history),
        "best epoch": int(best["epoch"]),
        "val acc": round(float(best["val_acc"]), 4),
        "val log loss": round(float(best["val_loss"]), 4),
        "train s / epoch": round(float(history["epoch_s"].mean()), 1),
        f"min to {target}": None if (t := time_to_accuracy(history, target)) is None else round(t / 60, 1),
    }
