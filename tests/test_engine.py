"""Batched prediction: seeded FLM masks, K-mask averaging, the Gaussian on the device."""
import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader, TensorDataset

from model import build_model
from model.loss import anomaly_map, image_score
from utils.engine import Execution, Scoring, predict


def setup():
    torch.manual_seed(0)
    model = build_model("resnet18", weights=None)
    images = torch.randn(6, 3, 32, 32)
    return model, DataLoader(TensorDataset(images), batch_size=4)


def run(model, loader, masks=1, seed=111, sigma=4.0):
    return predict(model, loader, torch.device("cpu"), Scoring(32, (1, 2, 3), sigma, masks, seed), Execution())


def test_prediction_is_repeatable_and_depends_on_the_mask_seed():
    model, loader = setup()
    scores, maps = run(model, loader)
    assert scores.shape == (6,) and maps.shape == (6, 32, 32)
    again = run(model, loader)
    np.testing.assert_array_equal(scores, again[0])
    np.testing.assert_array_equal(maps, again[1])
    assert not np.array_equal(maps, run(model, loader, seed=112)[1])


def test_k_masks_average_k_independent_maps():
    model, loader = setup()
    model.eval()
    images = next(iter(loader))[0]
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        target, student = model.distill(images)
        expected = sum(anomaly_map(target, model.restore(student, generator), 32) for _ in range(3)) / 3
    maps = run(model, DataLoader(TensorDataset(images), batch_size=4), masks=3, seed=7, sigma=0)[1]
    np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(maps, run(model, loader, masks=1, seed=7, sigma=0)[1][:4])


def test_predicted_maps_are_smoothed_like_scipy_and_scored_by_their_maximum():
    model, loader = setup()
    raw = run(model, loader, sigma=0)[1]
    scores, smoothed = run(model, loader, sigma=4)
    np.testing.assert_allclose(smoothed, np.stack([gaussian_filter(m, 4) for m in raw]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scores, image_score(torch.from_numpy(smoothed)).numpy())
