"""Caruana ensemble selection over stored validation predictions, on examples worked by hand."""

import numpy as np
import pytest

from hpo.errors import HpoError
from hpo.results.selection import (
    ensemble_prediction,
    greedy_path,
    members,
    nested_scores,
    scorer,
    select,
)

MAE, _ = scorer("regression", "mae")
MSE, _ = scorer("regression", "mse")


def column(*models: list[float]) -> np.ndarray:
    """Predictions (models, rows, 1) from one list of row values per model."""
    return np.array(models, dtype=np.float64)[:, :, None]


# Regression, targets y = [0, 0]; three models:
#   A = [1, 1] (mse 1), B = [-2, -2] (mse 4), C = [2, 0] (mse 2).
THREE = column([1, 1], [-2, -2], [2, 0])
ZEROS = np.zeros(2)


def test_greedy_path_picks_the_complement_and_then_a_model_again():
    # step 1, mean of one:      A: 1          B: 4            C: 2            -> A, mse 1
    # step 2, (A + X) / 2:      A: [1, 1] 1   B: [-.5,-.5] .25 C: [1.5,.5] 1.25 -> B, mse .25
    # step 3, (A + B + X) / 3:  A: [0, 0] 0   B: [-1,-1] 1    C: [1/3,-1/3] 1/9 -> A again, mse 0
    # step 4, (2A + B + X) / 4: A: [.25,.25] 1/16  B: [-.5,-.5] 1/4  C: [.5, 0] 1/8 -> A
    # The path goes on past its best point, as in auto-sklearn: step 4 is worse than step 3.
    path = greedy_path(THREE, ZEROS, MSE, maximize=False, steps=4)
    assert path.picks.tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(path.scores, [1, 0.25, 0, 1 / 16])
    np.testing.assert_allclose(select(THREE, ZEROS, MSE, False, steps=3), [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(select(THREE, ZEROS, MSE, False, steps=4), [3 / 4, 1 / 4, 0])


def test_ensemble_prediction_is_the_weighted_mean():
    # (2/3) [1, 1] + (1/3) [-2, -2] = [0, 0]; weights need not sum to 1: [2, 1] is the same
    np.testing.assert_allclose(ensemble_prediction(THREE, [2 / 3, 1 / 3, 0]), [[0], [0]])
    np.testing.assert_allclose(ensemble_prediction(THREE, [2, 1, 0]), [[0], [0]])
    # .25 [1, 1] + .75 [2, 0] = [1.75, .25]
    np.testing.assert_allclose(ensemble_prediction(THREE, [0.25, 0, 0.75]), [[1.75], [0.25]])


def test_ties_go_to_the_lowest_index():
    # y = [0]; A = [1], B = [-1]: both mse 1 -> A (index 0); then (A + A)/2 = 1 but
    # (A + B)/2 = 0 -> B.
    np.testing.assert_allclose(select(column([1], [-1]), np.zeros(1), MSE, False, 2), [0.5, 0.5])
    # identical models 1 and 2, better than model 0: always model 1, never its copy 2
    models = column([3, 3], [1, 1], [1, 1])
    np.testing.assert_allclose(select(models, ZEROS, MAE, False, 5), [0, 1, 0])
    # maximizing binary accuracy, y = [1, 0]; M0 = [.1, .9] wrong on both rows, M1 = [.8, .3]
    # and M2 = [.9, .2] right on both.
    # step 1: M1 and M2 score 1 -> M1.
    # step 2: (M1 + M0)/2 = [.45, .6] scores 0; M1 and M2 score 1 -> M1.
    # step 3: (2 M1 + M0)/3 = [.57, .5] scores .5 (.5 counts as class 1); M1 -> M1.
    # step 4: (3 M1 + M0)/4 = [.625, .45] scores 1, a three-way tie -> M0, the lowest index.
    acc, maximize = scorer("binary", "accuracy")
    probs = column([0.1, 0.9], [0.8, 0.3], [0.9, 0.2])
    y = np.array([1, 0])
    np.testing.assert_allclose(select(probs, y, acc, maximize, 3), [0, 1, 0])
    np.testing.assert_allclose(select(probs, y, acc, maximize, 4), [0.25, 0.75, 0])


def test_a_diverged_model_is_never_picked():
    # M0 predicts NaN (a trial that diverged): its score is NaN, which ranks last, even though
    # it comes first; M1 = [1, 1] is the only choice, in the ensemble and as the best single.
    models = column([np.nan, np.nan], [1, 1])
    np.testing.assert_allclose(select(models, ZEROS, MSE, False, 3), [0, 1])
    acc, maximize = scorer("binary", "accuracy")
    np.testing.assert_allclose(select(models, np.ones(2), acc, maximize, 3), [0, 1])
    nested = nested_scores(models, ZEROS, MSE, False, steps=3, folds=2)
    assert nested.ensemble == nested.best_single == pytest.approx(1)


def test_weights_sum_to_one_in_multiples_of_one_over_steps():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=(6, 50))  # 6 models, 50 rows, 4 classes
    y = rng.integers(0, 4, 50)
    for metric in ("accuracy", "loss"):
        weights = select(probs, y, *scorer("multiclass", metric), steps=7)
        assert weights.shape == (6,)
        assert weights.sum() == pytest.approx(1)
        np.testing.assert_allclose(weights * 7, np.round(weights * 7), atol=1e-12)


def test_members_lists_the_models_heaviest_first():
    assert members(np.array([0.2, 0, 0.6, 0.2])) == [(2, 0.6), (0, 0.2), (3, 0.2)]
    assert members(np.zeros(3)) == []


def test_binary_accuracy_thresholds_at_one_half():
    acc, maximize = scorer("binary", "accuracy")
    assert maximize
    # p = [.9, .5, .2, .7] -> classes [1, 1, 0, 1] (0.5 counts as 1); y = [1, 0, 0, 0]
    # -> right, wrong, right, wrong: 2/4
    assert acc(column([0.9, 0.5, 0.2, 0.7])[0], np.array([1, 0, 0, 0])) == pytest.approx(0.5)


def test_binary_crossentropy_clips_like_keras():
    loss, maximize = scorer("binary", "val_loss")  # the study's name works as well
    assert not maximize
    # y = [1, 0], p = [.8, .25]: -(ln .8 + ln(1 - .25)) / 2
    expected = -(np.log(0.8) + np.log(0.75)) / 2
    assert loss(column([0.8, 0.25])[0], np.array([1, 0])) == pytest.approx(expected)
    # a certain wrong answer costs -ln(1e-7) ≈ 16.118, not infinity
    assert loss(column([1.0])[0], np.array([0])) == pytest.approx(-np.log(1e-7), rel=1e-6)
    assert loss(column([0.0])[0], np.array([1])) == pytest.approx(-np.log(1e-7), rel=1e-6)


MULTI = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
MULTI_Y = np.array([1, 1, 2])


def test_multiclass_accuracy_takes_the_argmax():
    acc, _ = scorer("multiclass", "accuracy")
    # argmax [1, 0, 2] against y [1, 1, 2]: 2/3
    assert acc(MULTI, MULTI_Y) == pytest.approx(2 / 3)
    # a tie goes to the first class, as argmax does: [.4, .4, .2] says class 0
    assert acc(np.array([[0.4, 0.4, 0.2]]), np.array([1])) == 0
    assert acc(np.array([[0.4, 0.4, 0.2]]), np.array([0])) == 1


def test_multiclass_crossentropy_is_the_log_of_the_true_class():
    loss, _ = scorer("multiclass", "loss")
    # true-class probabilities .5, .3, .8
    assert loss(MULTI, MULTI_Y) == pytest.approx(-(np.log(0.5) + np.log(0.3) + np.log(0.8)) / 3)


def test_scorers_score_a_batch_of_candidates_at_once():
    acc, _ = scorer("multiclass", "accuracy")
    batch = np.stack([MULTI, MULTI[:, ::-1]])  # reversed classes: argmax [1, 0, 0] -> 1/3
    np.testing.assert_allclose(acc(batch, MULTI_Y), [2 / 3, 1 / 3])
    # regression: [1, 3] against [0, 0] -> mae 2, mse (1 + 9) / 2 = 5
    assert MAE(column([1, 3])[0], ZEROS) == pytest.approx(2)
    assert MSE(column([1, 3])[0], ZEROS) == pytest.approx(5)
    np.testing.assert_allclose(MSE(column([1, 3], [0, 2]), ZEROS), [5, 2])


def test_nested_score_sees_through_a_choice_that_does_not_generalise():
    # y = [0, 0]; M0 = [0, 5] is right on row 0, M1 = [5, 0] on row 1. Two folds of one row.
    # Held row 0: chosen on row 1, every step picks M1 -> predicts 5 on row 0; likewise
    # held row 1 gets M0's 5. Pooled: [5, 5], mse 25, and so for the best single model.
    # On all rows: step 1 ties (12.5 each) -> M0; step 2 (M0 + M1)/2 = [2.5, 2.5], mse 6.25.
    models = column([0, 5], [5, 0])
    nested = nested_scores(models, ZEROS, MSE, False, steps=2, folds=2)
    assert nested.ensemble == pytest.approx(25)
    assert nested.best_single == pytest.approx(25)
    np.testing.assert_allclose(nested.weights, [0.5, 0.5])
    assert nested.in_sample == pytest.approx(6.25)


def test_nested_score_keeps_an_ensemble_that_generalises():
    # M0 = y + 1 and M1 = y - 1 on every row: any fold's choice is M0 then M1 (a tie goes to
    # M0, then the complement cancels the error), so the pooled ensemble is exact, mse 0,
    # while the best single model (M0 in every fold) has mse 1.
    y = np.arange(10.0) - 5
    nested = nested_scores(column(y + 1, y - 1), y, MSE, False, steps=2, folds=5)
    assert nested.ensemble == pytest.approx(0)
    assert nested.best_single == pytest.approx(1)
    np.testing.assert_allclose(nested.weights, [0.5, 0.5])


def test_nested_score_of_noise_is_below_the_in_sample_score():
    # 20 models of random probabilities for random labels: nothing to learn, yet the
    # selection fits the rows it is chosen on. Held out, the fit is gone.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    probs = rng.random((20, 60, 1))
    acc, maximize = scorer("binary", "accuracy")
    nested = nested_scores(probs, y, acc, maximize)
    assert nested.in_sample >= 0.65
    assert nested.ensemble < nested.in_sample
    assert nested.in_sample == pytest.approx(acc(ensemble_prediction(probs, nested.weights), y))
    np.testing.assert_allclose(nested.weights, select(probs, y, acc, maximize))


def test_nested_score_of_a_single_model_is_that_model():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 20)
    probs = rng.dirichlet(np.ones(3), size=(1, 20))
    loss, maximize = scorer("multiclass", "loss")
    nested = nested_scores(probs, y, loss, maximize, steps=3, folds=4)
    assert nested.ensemble == nested.best_single == pytest.approx(loss(probs[0], y))
    np.testing.assert_allclose(nested.weights, [1])


def test_float16_predictions_give_the_float64_weights():
    # THREE moved by 0.3 and scaled by 0.1, so the values are not exact in float16:
    # y = [.3, .3]; A = [.4, .4], B = [.1, .1], C = [.5, .3]. The path is THREE's (mse / 100):
    # margins of at least 6e-4 against float16's rounding of about 1e-4 in a value.
    models = 0.3 + 0.1 * THREE
    y = np.full(2, 0.3)
    weights = select(models, y, MSE, False, steps=4)
    np.testing.assert_allclose(weights, [3 / 4, 1 / 4, 0])
    half = models.astype(np.float16)
    np.testing.assert_array_equal(select(half, y, MSE, False, steps=4), weights)
    assert ensemble_prediction(half, weights).dtype == np.float64


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: select(THREE, ZEROS, MSE, False, steps=0), "at least 1 step"),
        (lambda: select(np.zeros((0, 2, 1)), ZEROS, MSE, False), "no models"),
        (lambda: select(THREE, np.zeros(3), MSE, False), "do not match 2 rows"),
        (lambda: select(THREE[:, :, 0], ZEROS, MSE, False), "shape \\(models, rows, outputs\\)"),
        (lambda: nested_scores(THREE, ZEROS, MSE, False, folds=5), "2 rows are too few"),
        (lambda: nested_scores(THREE, ZEROS, MSE, False, folds=1), "at least 2 folds"),
        (lambda: nested_scores(THREE, ZEROS, MSE, False, steps=0, folds=2), "at least 1 step"),
        (lambda: scorer("binary", "mae"), "no binary metric 'mae'"),
        (lambda: scorer("regression", "loss"), "mae or mse"),
        (lambda: scorer("ranking", "accuracy"), "unknown task"),
        (lambda: ensemble_prediction(THREE, [1, 0]), "do not match"),
        (lambda: ensemble_prediction(THREE, [0, 0, 0]), "positive sum"),
        (lambda: scorer("binary", "accuracy")[0](np.ones((2, 3)), ZEROS), "need 1 output"),
        (lambda: scorer("multiclass", "loss")[0](MULTI, np.array([0, 1, 3])), "0..2"),
    ],
)
def test_bad_input_is_a_one_line_hpo_error(call, message):
    with pytest.raises(HpoError, match=message) as error:
        call()
    assert "\n" not in str(error.value)
