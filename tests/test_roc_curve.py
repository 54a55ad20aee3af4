"""Tests of utils.metrics.roc_curve against scikit-learn and the exact AU-ROC, on CPU."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from utils.metrics import roc_curve


def scored_samples(seed: int, n: int, levels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) with a quarter positive and scores (n,) higher for positives on average,
    quantised to `levels` values so that ties occur (continuous when levels is None)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.25).astype(np.int64)
    scores = rng.random(n) + 0.5 * labels * rng.random(n)
    if levels is not None:
        scores = np.round(scores * levels) / levels
    return labels, scores


@pytest.mark.parametrize("levels", [5, 30, None])
def test_unthinned_curve_equals_sklearn(levels):
    labels, scores = scored_samples(0, 400, levels)
    fpr, tpr = roc_curve(labels, scores, max_points=10_000)
    expected_fpr, expected_tpr, _ = sklearn_roc_curve(labels, scores, drop_intermediate=False)
    assert fpr.dtype == tpr.dtype == np.float32
    np.testing.assert_allclose(fpr, expected_fpr, atol=1e-7)
    np.testing.assert_allclose(tpr, expected_tpr, atol=1e-7)


def test_ties_are_one_point():
    labels = np.array([0, 1, 0, 1, 1])
    scores = np.array([0.2, 0.2, 0.5, 0.9, 0.2])
    fpr, tpr = roc_curve(labels, scores)
    # thresholds 0.9, 0.5, 0.2: the three samples at 0.2 move the curve in one diagonal step
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 1])


def test_masks_and_maps_of_any_shape():
    labels, scores = scored_samples(1, 2 * 8 * 8, 12)
    flat = roc_curve(labels, scores)
    shaped = roc_curve(labels.reshape(2, 8, 8).astype(bool), scores.reshape(2, 8, 8))
    for a, b in zip(flat, shaped):
        np.testing.assert_array_equal(a, b)


def test_thinned_curve_keeps_its_shape():
    # Few positives with a steep rise at small FPR, like the pixels of a test set.
    rng = np.random.default_rng(2)
    labels = rng.random(200_000) < 0.03
    scores = (rng.random(labels.size) + labels * rng.random(labels.size) * 2.0).astype(np.float32)
    fpr, tpr = roc_curve(labels, scores, max_points=500)
    assert 100 < fpr.size <= 500
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    # Points spread along the curve: the curve is at most 2 long, so no gap exceeds twice
    # the even spacing (picking by index would jump across the steep rise).
    assert np.hypot(np.diff(fpr), np.diff(tpr)).max() < 2 * 2 / (500 - 1)
    area = np.trapezoid(tpr.astype(np.float64), fpr.astype(np.float64))
    assert abs(area - roc_auc_score(labels, scores)) < 1e-3


def test_rejects_a_single_class_and_nan():
    with pytest.raises(ValueError, match="both"):
        roc_curve(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="NaN"):
        roc_curve(np.array([0, 1, 0]), np.array([0.1, np.nan, 0.3]))
    with pytest.raises(ValueError, match="max_points"):
        roc_curve(np.array([0, 1]), np.array([0.1, 0.2]), max_points=1)
