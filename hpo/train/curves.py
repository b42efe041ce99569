"""Learning-curve arithmetic shared by the objective and the report: the best epoch of a curve.

Why smooth: a trial's value is the best point of its validation curve, and over many noisy
epochs (Boston: 200 epochs of a 4-fold MAE on 101 houses a fold) the best point is mostly
luck. Ranking trials by it favours the jumpiest configurations (a high learning rate, a small
batch), whose luckiest epoch is furthest below their typical one. The mean over a few
consecutive epochs is what a reader of the book's smoothed Boston curve picks by eye.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def smoothed(curve: Sequence[float], epochs: int) -> np.ndarray:
    """Centred moving mean over `epochs` epochs; NaN where the window does not fit the curve
    or holds a non-finite value (a loss that diverged).

    A curve shorter than the window (a trial pruned early) is averaged over its own length.
    """
    values = np.asarray(curve, dtype=float)
    values = np.where(np.isfinite(values), values, np.nan)
    window = max(1, min(epochs, len(values)))
    out = np.full(len(values), np.nan)
    if len(values):
        means = np.convolve(values, np.ones(window) / window, mode="valid")
        start = (window - 1) // 2
        out[start : start + len(means)] = means
    return out


def best_point(
    curve: Sequence[float], maximize: bool, smooth_epochs: int = 1
) -> tuple[int, float] | None:
    """(1-based best epoch, its value) of the curve smoothed over `smooth_epochs` epochs; None
    when no epoch has a finite value."""
    values = smoothed(curve, smooth_epochs)
    if np.isnan(values).all():
        return None
    index = int(np.nanargmax(values) if maximize else np.nanargmin(values))
    return index + 1, float(values[index])
