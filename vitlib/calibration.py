"""Calibration: making P(dog) honest, because the log loss punishes a confident mistake without limit.

Two remedies, each fitted or chosen on the validation split: a temperature T on the logit
(P -> sigmoid(logit(P) / T), one number fitted by LBFGS), and clipping P to [c, 1 - c], which caps
what one image can cost. `compare_calibrations` scores both on held-out halves of the split and
`choose_calibration` picks the best; the plots show why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .metrics import EPS, image_losses, log_loss
from .plots import finish

CLIPS = (0.001, 0.005, 0.01, 0.025, 0.05)  # clipping thresholds compared on the validation split
LOGIT_EPS = 1e-7  # float32 resolves P(dog) only to ~6e-8 near 1: logits are taken of P clipped here


class CalibrationError(ValueError):
    """Too few validation images to calibrate on; the message says how many there are."""


def logit(p_dog) -> np.ndarray:
    """log(p / (1 - p)) in float64, of P clipped to [LOGIT_EPS, 1 - LOGIT_EPS] so that it is finite."""
    p = np.clip(np.asarray(p_dog, dtype=np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
    return 0.5 * (1 + np.tanh(np.asarray(z, dtype=np.float64) / 2))  # no overflow for large |z|


@dataclass(frozen=True)
class Calibration:
    """P(dog) -> sigmoid(logit(P) / temperature), then clipped to [clip, 1 - clip]. The default changes nothing."""

    temperature: float = 1.0  # > 1 softens, < 1 sharpens, inf gives 0.5 everywhere
    clip: float = 0.0  # 0: no clipping (Kaggle still clips at 1e-15)

    def apply(self, p_dog) -> np.ndarray:
        p = np.asarray(p_dog, dtype=np.float64)
        if self.temperature != 1.0:
            p = sigmoid(logit(p) / self.temperature)
        return np.clip(p, self.clip, 1 - self.clip) if self.clip else p

    def describe(self) -> str:
        parts = [f"temperature T={self.temperature:.3g}"] if self.temperature != 1.0 else []
        parts += [f"clip to [{self.clip:g}, {1 - self.clip:g}]"] if self.clip else []
        return " + ".join(parts) or "none"


def fit_temperature(labels, p_dog) -> float:
    """The T minimising the log loss of sigmoid(logit(P) / T): one number, fitted by LBFGS.

    The loss is convex in s = 1/T, so the optimiser works on s, from s = 1, and finds the global
    minimum. s is kept >= 0: predictions no better than chance get T = inf (every P becomes 0.5)
    rather than a negative T that would swap cats and dogs.
    """
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    if len(y) == 0:
        raise CalibrationError("Cannot fit a temperature on no images: the validation split is empty.")
    z = torch.as_tensor(logit(p_dog))
    s = torch.ones((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([s], lr=1.0, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(s * z, y)
        loss.backward()
        return loss

    opt.step(closure)
    scale = float(s.detach())
    return 1 / scale if scale > 0 else math.inf


def compare_calibrations(labels, p_dog, clips=CLIPS, seed: int = 0) -> pd.DataFrame:
    """The validation log loss of no calibration, clipping at each of `clips`, a temperature, and both.

    `val_log_loss` fits the temperature on the whole split and scores it there (slightly flattering);
    `held_out_log_loss` fits it on one random half and scores the other half, both ways round: the
    fair number to choose by. Clipping fits nothing, so its two numbers agree.
    """
    y, p = np.asarray(labels), np.asarray(p_dog, dtype=np.float64)
    if len(y) < 2:
        raise CalibrationError(f"Calibrating needs at least 2 validation images; the split has {len(y)}.")
    half = np.random.default_rng(seed).permutation(len(y)) % 2
    t_all = fit_temperature(y, p)
    t_without = [fit_temperature(y[half != k], p[half != k]) for k in (0, 1)]  # fitted without half k

    def held_out(scaled: bool, clip: float) -> float:
        total = 0.0
        for k in (0, 1):
            cal, part = Calibration(t_without[k] if scaled else 1.0, clip), half == k
            total += part.sum() * log_loss(y[part], cal.apply(p[part]))
        return total / len(y)

    rows = []
    for scaled in (False, True):
        for clip in (0.0, *clips):
            cal = Calibration(t_all if scaled else 1.0, clip)
            method = ("temperature" if scaled else "clip" if clip else "none") + (" + clip" if scaled and clip else "")
            rows.append({"method": method, "temperature": cal.temperature, "clip": clip,
                         "val_log_loss": log_loss(y, cal.apply(p)), "held_out_log_loss": held_out(scaled, clip)})
    return pd.DataFrame(rows)


def fitted_temperature(table: pd.DataFrame) -> float:
    """The temperature compare_calibrations fitted on the whole validation split."""
    return float(table.loc[table["method"] == "temperature", "temperature"].item())


def choose_calibration(table: pd.DataFrame) -> Calibration:
    """The row of `compare_calibrations` with the lowest held-out log loss (on a tie, the simpler one)."""
    best = table.loc[table["held_out_log_loss"].idxmin()]
    return Calibration(float(best["temperature"]), float(best["clip"]))


def paired_difference(labels, p_a, p_b) -> tuple[float, float]:
    """Log loss of `p_a` minus that of `p_b` on the same images, and the standard error of that difference.

    Paired: each image's two losses are subtracted first, so what the images have in common (easy or
    hard photos) cancels. The standard error is the standard deviation of the per-image differences
    over sqrt(N), which a paired bootstrap of the images estimates too.
    """
    diff = image_losses(labels, p_a) - image_losses(labels, p_b)
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(len(diff)))


def calibration_grid(table: pd.DataFrame) -> pd.DataFrame:
    """compare_calibrations' held-out log loss as a grid: a row per clipping, a column without and with T."""
    t = fitted_temperature(table)
    raw, scaled = "T = 1 (raw)", f"T = {t:.3g} (fitted)"
    grid = table.assign(clip=[f"[{c:g}, {1 - c:g}]" if c else "none" for c in table["clip"]],
                        temperature=np.where(table["method"].str.startswith("temperature"), scaled, raw))
    out = grid.pivot(index="clip", columns="temperature", values="held_out_log_loss")
    out = out.reindex(index=grid["clip"].unique(), columns=[raw, scaled])
    out.columns.name = "held-out log loss"
    return out


# ---------------------------------------------------------------------------------------------
# Plots


def plot_log_loss(labels, p_dog, source: str | None = None) -> plt.Figure:
    """Why a confident mistake costs so much: the cost of one image, and how few images carry the loss."""
    fig, (ax_cost, ax_share) = plt.subplots(1, 2, figsize=(11, 4))
    q = np.logspace(-16, 0, 400)  # the probability given to the true class
    ax_cost.semilogx(q, -np.log(np.clip(q, EPS, 1)), color="black")
    for at, note, offset in ((0.5, " (a coin flip)", (-150, -4)), (0.01, "", (8, 2)), (1e-6, "", (8, 2)),
                             (EPS, " (Kaggle's clip)", (8, -12))):
        ax_cost.plot(at, -np.log(at), "o", color="tab:red")
        ax_cost.annotate(f"P = {at:g}: {-np.log(at):.2f}{note}", (at, -np.log(at)), textcoords="offset points",
                         xytext=offset, fontsize=8)
    for clip, style, y, va in ((0.01, "--", 0.6, "bottom"), (0.05, ":", -0.4, "top")):
        ax_cost.axhline(-np.log(clip), ls=style, color="tab:blue")
        ax_cost.text(1e-16, -np.log(clip) + y, f"clipped to [{clip:g}, {1 - clip:g}]: at most {-np.log(clip):.2f}",
                     va=va, fontsize=8, color="tab:blue")
    ax_cost.text(0.45, 0.64, f"one answer at P = 0.01 costs {-np.log(0.01):.2f}, as much\n"
                 f"as {np.log(0.01) / np.log(0.9):.0f} right answers at P = 0.9 ({-np.log(0.9):.3f} each)",
                 transform=ax_cost.transAxes, fontsize=8, bbox={"facecolor": "white", "alpha": 0.8})
    ax_cost.set(xlabel="probability given to the true class", ylabel="log loss of this one image", ylim=(-1, 38),
                title="one image: a confident mistake costs up to 34.5")
    losses = np.sort(image_losses(labels, p_dog))[::-1]
    worst = np.arange(1, len(losses) + 1) / len(losses) * 100
    share = np.cumsum(losses) / losses.sum() * 100
    ax_share.plot(worst, share, color="black", label="this model")
    ax_share.plot([0, 100], [0, 100], ls=":", color="grey", label="every image costing the same")
    notes = []
    for pct in (1, 5, 20):
        i = max(int(len(losses) * pct / 100) - 1, 0)
        ax_share.plot(worst[i], share[i], "o", color="tab:red")
        notes.append(f"worst {pct}% of the images: {share[i]:.0f}% of the loss")
    ax_share.text(0.35, 0.25, "\n".join(notes), transform=ax_share.transAxes, fontsize=8,
                  bbox={"facecolor": "white", "alpha": 0.8})
    ax_share.set(xlabel="the worst images, % of the validation split", ylabel="% of the validation log loss",
                 title=f"validation: {len(losses):,} images, log loss {losses.mean():.3f}")
    ax_share.legend(fontsize=8, loc="lower right")
    for ax in (ax_cost, ax_share):
        ax.grid(alpha=0.3)
    if source:
        fig.suptitle(source, fontsize=10)
    fig.tight_layout()
    return fig


def plot_calibration(labels, p_dog, table: pd.DataFrame, chosen: Calibration, source: str | None = None) -> plt.Figure:
    """Validation log loss against the temperature and against the clipping threshold; a reliability diagram."""
    y, p = np.asarray(labels), np.asarray(p_dog, dtype=np.float64)
    t_fit = fitted_temperature(table)
    fig, (ax_t, ax_c, ax_r) = plt.subplots(1, 3, figsize=(14, 4))
    temps = np.geomspace(0.2, 5, 80)
    ax_t.semilogx(temps, [log_loss(y, Calibration(t).apply(p)) for t in temps], color="black")
    ax_t.axvline(1, ls=":", color="grey", label="T = 1: the raw model")
    if math.isfinite(t_fit):
        ax_t.plot(t_fit, log_loss(y, Calibration(t_fit).apply(p)), "o", color="tab:red",
                  label=f"fitted T = {t_fit:.3g}")
    ax_t.set(xlabel="temperature T (P = sigmoid(logit / T))", ylabel="validation log loss",
             title="T < 1 sharpens, T > 1 softens")
    ax_t.set_xticks([0.25, 0.5, 1, 2, 4], ["0.25", "0.5", "1", "2", "4"])
    ax_t.xaxis.set_minor_formatter(plt.NullFormatter())
    clips = np.geomspace(1e-4, 0.3, 80)
    for t, name in ((1.0, "raw"), (t_fit, f"after T = {t_fit:.3g}")):
        ax_c.semilogx(clips, [log_loss(y, Calibration(t, c).apply(p)) for c in clips], label=f"{name}, clipped")
    best = table["held_out_log_loss"].idxmin()
    ax_c.set(xlabel="clip to [c, 1 - c]", ylabel="validation log loss",
             title=f"chosen: {chosen.describe()}\n(held-out log loss {table.loc[best, 'held_out_log_loss']:.4f})")
    _reliability(ax_r, y, p, chosen)
    return finish(fig, (ax_t, ax_c), source)


def _reliability(ax, y, p, chosen: Calibration, bins: int = 10) -> None:
    """Mean P(dog) against the share of dogs, per bin of P(dog): on the diagonal when calibrated."""
    edges = np.linspace(0, 1, bins + 1)
    for q, name in ((p, "raw"), (chosen.apply(p), chosen.describe())):
        which = np.clip(np.digitize(q, edges) - 1, 0, bins - 1)
        n = np.bincount(which, minlength=bins)
        keep = n > 0
        mean_p = np.bincount(which, q, bins)[keep] / n[keep]
        dogs = np.bincount(which, y, bins)[keep] / n[keep]
        line = ax.plot(mean_p, dogs, "o-", label=name, markersize=3)[0]
    for x_, y_, count in zip(mean_p, dogs, n[keep], strict=True):  # how many images each point of the last stands on
        ax.annotate(f"{count:,}", (x_, y_), xytext=(4, -9), textcoords="offset points", fontsize=6.5,
                    color=line.get_color())
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="calibrated")
    ax.set(xlabel="predicted P(dog), per bin", ylabel="share of dogs in the bin",
           title="reliability (numbers: images per bin, calibrated)",
           xlim=(-0.03, 1.08), ylim=(-0.07, 1.04))  # room for the counts of the bins at the edges
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
