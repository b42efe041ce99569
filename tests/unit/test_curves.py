"""The best epoch of a learning curve, raw or smoothed over a few epochs."""

import math

import numpy as np
import pytest

from hpo.train.curves import best_point, smoothed

# A lucky dip at epoch 3 before the curve settles lower for good from epoch 7.
CURVE = [9.0, 6.0, 2.0, 6.0, 5.0, 4.0, 2.6, 2.5, 2.4, 2.5, 2.6]


def test_raw_best_point_is_the_single_best_epoch():
    assert best_point(CURVE, maximize=False) == (3, 2.0)
    assert best_point(CURVE, maximize=True) == (1, 9.0)


def test_smoothed_best_point_prefers_a_settled_stretch_to_a_lucky_epoch():
    epoch, value = best_point(CURVE, maximize=False, smooth_epochs=3)
    assert epoch == 9
    assert value == pytest.approx((2.5 + 2.4 + 2.5) / 3)


def test_smoothed_is_a_centred_mean_undefined_where_the_window_overhangs():
    values = smoothed([1.0, 2.0, 3.0, 4.0, 5.0], 3)
    assert math.isnan(values[0]) and math.isnan(values[-1])
    np.testing.assert_allclose(values[1:-1], [2.0, 3.0, 4.0])
    np.testing.assert_allclose(smoothed([1.0, 2.0, 3.0], 1), [1.0, 2.0, 3.0])


def test_curve_shorter_than_the_window_is_averaged_whole():
    # A trial pruned after 2 epochs under an 11-epoch window still gets a value.
    assert best_point([4.0, 2.0], maximize=False, smooth_epochs=11) == (1, 3.0)


def test_diverged_epochs_are_never_best():
    # A NaN-loss trial saves its curve (the NaN last) before it is failed.
    assert best_point([3.0, 2.0, float("nan")], maximize=False) == (2, 2.0)
    epoch, value = best_point([3.0, 2.0, 2.2, 2.1, float("inf")], False, smooth_epochs=3)
    assert (epoch, value) == (3, pytest.approx(2.1))  # the window over the inf is no candidate
    assert best_point([float("nan")], maximize=True) is None
