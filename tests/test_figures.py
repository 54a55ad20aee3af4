"""Tests of utils/figures.py and utils/predictions.py on small fake predictions, on CPU."""
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from scipy import ndimage
from sklearn.decomposition import PCA

from utils import metrics
from utils.figures import (draw_category, draw_run, figure_features, figure_lambda_sweep, figure_overlay,
                           figure_score_density, pca_project)
from utils.predictions import Predictions


def fake_predictions(path: Path, n: int = 12, k: int = 3, size: int = 64, channels: int = 8,
                     seed: int = 0) -> Predictions:
    """Write one category's predictions as main.py does (the category is the file name) and
    return the record as written.

    The second half of the n images is anomalous, each with a dark disc; the maps peak on
    the discs; the input features carry the discs and the restored ones mostly remove them.
    """
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) >= n // 2).astype(np.int64)                                # (N,)
    defects = np.where(labels == 1, np.where(np.arange(n) % 2 == 0, "crack", "hole"), "good")
    rows, columns = np.mgrid[:size, :size] / size                                     # (S, S) each
    centres = rng.uniform(0.25, 0.75, (n, 2, 1, 1))
    radii = rng.uniform(0.06, 0.15, (n, 1, 1))
    masks = ((rows - centres[:, 0]) ** 2 + (columns - centres[:, 1]) ** 2 < radii ** 2) & (labels[:, None, None] == 1)
    shade = np.stack([rows, columns, np.full_like(rows, 0.5)], axis=-1)                # (S, S, 3)
    images = 0.2 + 0.6 * shade + 0.05 * rng.standard_normal((n, size, size, 3)) - 0.3 * masks[..., None]
    images = (255 * np.clip(images, 0, 1)).astype(np.uint8)                            # (N, S, S, 3)
    maps = ndimage.gaussian_filter(0.6 * masks + 2 * rng.standard_normal(masks.shape), sigma=(0, 3, 3))
    maps = maps.astype(np.float32)                                                     # (N, S, S)
    scores = maps.max(axis=(1, 2))                                                     # (N,)
    values = {"image_auroc": metrics.image_auroc(labels, scores), "pixel_auroc": metrics.pixel_auroc(masks, maps),
              "aupro": metrics.aupro(masks, maps), "aupro_per_image": metrics.aupro_per_image(masks, maps)}
    example_index = np.flatnonzero(labels)[:k]

    # Level-1-like features at a quarter of the image side: smooth fields plus the defect.
    defect = masks[example_index, 2::4, 2::4][:, None]                                 # (k, 1, h, w)
    direction = rng.standard_normal((1, channels, 1, 1))
    smooth = ndimage.gaussian_filter(rng.standard_normal((k, channels, size // 4, size // 4)), sigma=(0, 0, 2, 2))
    feature_input = smooth * np.linspace(3, 0.5, channels)[None, :, None, None] + defect * direction
    feature_restored = feature_input - 0.8 * defect * direction + 0.1 * rng.standard_normal(feature_input.shape)
    feature_input, feature_restored = pca_project(feature_input, feature_restored)

    path.parent.mkdir(parents=True, exist_ok=True)
    predictions = Predictions.of(path.stem, scores, labels, list(defects), values, metrics.f1_threshold(labels, scores),
                                 "f1_test", masks, maps, images, example_index, feature_input, feature_restored)
    predictions.save(path)
    return predictions


def assert_drawn(path: Path) -> np.ndarray:
    """The file is a PNG with visible content; returns its pixels (H, W, 4) in [0, 1]."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200
    colours = pixels[..., :3]
    assert colours.std() > 0.05
    assert (colours < 0.5).mean() > 0.005  # dark ink somewhere, not a blank white page
    return pixels


def test_predictions_are_read_back_field_by_field(tmp_path):
    written = fake_predictions(tmp_path / "bottle.npz")
    pred = Predictions.load(tmp_path / "bottle.npz")
    for field in fields(Predictions):
        np.testing.assert_array_equal(getattr(pred, field.name), getattr(written, field.name), err_msg=field.name)
    assert pred.category == "bottle" and isinstance(pred.category, str)
    assert pred.scores.shape == (12,) and pred.labels.dtype == np.int64
    assert pred.defects[0] == "good" and pred.defects[-1] in ("crack", "hole")
    assert pred.feature_input.shape == pred.feature_restored.shape == (3, 16, 16, 3)
    assert list(pred.metrics) == ["image_auroc", "pixel_auroc", "aupro", "aupro_per_image"]
    assert isinstance(pred.threshold, float) and pred.threshold in pred.scores
    # An evaluation written before thresholds existed reads with none.
    with np.load(tmp_path / "bottle.npz") as data:
        np.savez(tmp_path / "old.npz", **{name: data[name] for name in data.files if name != "threshold"})
    assert Predictions.load(tmp_path / "old.npz").threshold is None


def test_pca_project_matches_sklearn_with_fixed_signs():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((3, 6, 5, 4)) * np.array([5.0, 3, 2, 1, 0.5, 0.2])[None, :, None, None]
    other = rng.standard_normal((2, 6, 7, 7))
    projected, other_projected, again = pca_project(reference, other, reference)
    assert projected.shape == (3, 5, 4, 3) and other_projected.shape == (2, 7, 7, 3)
    assert projected.dtype == other_projected.dtype == np.float32
    np.testing.assert_array_equal(again, projected)  # the others use the reference's mean and basis

    pixels = reference.transpose(0, 2, 3, 1).reshape(-1, 6)
    pca = PCA(n_components=3, svd_solver="full").fit(pixels)
    components = pca.components_ * np.sign(pca.components_[np.arange(3), np.abs(pca.components_).argmax(1)])[:, None]
    expected = (pixels - pca.mean_) @ components.T
    np.testing.assert_allclose(projected.reshape(-1, 3), expected, rtol=1e-4, atol=1e-4)
    expected_other = (other.transpose(0, 2, 3, 1).reshape(-1, 6) - pca.mean_) @ components.T
    np.testing.assert_allclose(other_projected.reshape(-1, 3), expected_other, rtol=1e-4, atol=1e-4)

    variances = projected.reshape(-1, 3).var(axis=0)
    assert variances[0] > variances[1] > variances[2]


def test_pca_project_is_deterministic_and_checks_shapes():
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    first = pca_project(reference)[0]
    np.testing.assert_array_equal(pca_project(reference.copy())[0], first)
    with pytest.raises(ValueError, match="C >= 3"):
        pca_project(reference[:, :2])
    with pytest.raises(ValueError, match="like the reference"):
        pca_project(reference, reference[:, :5])


def test_draw_category_and_run(tmp_path):
    run = tmp_path / "run"
    fake_predictions(run / "predictions" / "bottle.npz")
    out_dir = tmp_path / "single"
    paths = draw_category(run / "predictions" / "bottle.npz", out_dir)
    assert [path.name for path in paths] == ["bottle_scores.png", "bottle_examples.png", "bottle_roc.png",
                                         "bottle_features.png"]
    for path in paths:
        assert_drawn(path)

    paths = draw_run(run)
    assert sorted(path.name for path in paths) == ["bottle_examples.png", "bottle_features.png", "bottle_roc.png",
                                                   "bottle_scores.png"]
    for path in paths:
        assert path.parent == run / "figures"
        assert_drawn(path)


def test_figure_features_with_and_without_the_ilm_only_run(tmp_path):
    with_flm = fake_predictions(tmp_path / "bottle.npz")
    # The run without FLM sees the same images through the same teacher; only its restoration differs.
    distortion = np.random.default_rng(1).standard_normal(with_flm.feature_restored.shape).astype(np.float32)
    without_flm = replace(with_flm, feature_restored=with_flm.feature_restored + distortion)
    figure_features(with_flm, without_flm, tmp_path / "both.png")
    figure_features(with_flm, None, tmp_path / "flm_only.png")
    both, flm_only = assert_drawn(tmp_path / "both.png"), assert_drawn(tmp_path / "flm_only.png")
    assert both.shape[0] == flm_only.shape[0] and both.shape[1] > flm_only.shape[1]  # one column fewer

    other_images = replace(without_flm, example_index=without_flm.example_index + 1)
    with pytest.raises(ValueError, match="same test images"):
        figure_features(with_flm, other_images, tmp_path / "mismatch.png")
    flipped = without_flm.feature_input * np.array([-1, 1, 1], dtype=np.float32)  # another sign of PC 1
    with pytest.raises(ValueError, match="one PCA basis"):
        figure_features(with_flm, replace(without_flm, feature_input=flipped), tmp_path / "mismatch.png")


def test_figure_overlay_draws_the_map_over_the_image(tmp_path):
    pred = fake_predictions(tmp_path / "bottle.npz")
    maps = pred.example_maps
    figure_overlay(pred.example_images[0], maps[0], (float(maps.min()), float(maps.max())),
                   "000.png: score 0.7 (normalized 0.81), anomalous", tmp_path / "overlay" / "000.png.png")
    assert_drawn(tmp_path / "overlay" / "000.png.png")


def test_figure_lambda_sweep(tmp_path):
    rows = [{"image_auroc": 0.97 + d, "pixel_auroc": 0.96 + d, "aupro": 0.90 + d, "aupro_per_image": "0.93"}
            for d in (0.01, 0.02, 0.0, -0.01)]
    figure_lambda_sweep([0.1, 0.2, 0.3, 0.4], rows, tmp_path / "lambda.png")
    assert_drawn(tmp_path / "lambda.png")
    with pytest.raises(ValueError, match="one row per ratio"):
        figure_lambda_sweep([0.1, 0.2], rows, tmp_path / "wrong.png")


@pytest.mark.parametrize("case", ["normal scores equal", "all scores equal", "one anomalous image"])
def test_score_density_without_spread(tmp_path, case):
    pred = fake_predictions(tmp_path / "bottle.npz")
    scores = pred.scores.copy()
    if case == "normal scores equal":
        scores[pred.labels == 0] = 0.3
    elif case == "all scores equal":
        scores[:] = 0.3
    else:
        pred = replace(pred, labels=np.eye(len(scores), dtype=np.int64)[-1])
    figure_score_density(replace(pred, scores=scores), tmp_path / "scores.png")
    assert_drawn(tmp_path / "scores.png")
