"""Batched prediction: FLM masks seeded per image, K-mask averaging, the Gaussian on the device."""
import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import model_for
from model.engine import Execution, Step, Trainer, execution_for, predict, train_epoch
from model.generator import HashedDraws, MaskDraws
from model.methods import mrkd_objective
from model.settings import Scoring
from model.loss import anomaly_map, image_score, level_distances


def setup():
    torch.manual_seed(0)
    model = model_for("resnet18")
    images = torch.randn(6, 3, 32, 32)
    return model, DataLoader(TensorDataset(images), batch_size=4)


def run(model, loader, masks=1, seed=111, sigma=4.0):
    return predict(model, loader, torch.device("cpu"), Scoring((1, 2, 3), sigma, masks, "max"), Execution(), seed)


def test_prediction_is_repeatable_and_depends_on_the_mask_seed():
    model, loader = setup()
    scores, maps = run(model, loader)
    assert scores.shape == (6,) and maps.shape == (6, 32, 32)
    again = run(model, loader)
    np.testing.assert_array_equal(scores, again[0])
    np.testing.assert_array_equal(maps, again[1])
    assert not np.array_equal(maps, run(model, loader, seed=112)[1])


def test_an_images_score_depends_on_the_image_alone_not_its_batch():
    model, loader = setup()
    scores, maps = run(model, loader)
    images = loader.dataset.tensors[0]
    for batch_size, order in ((1, range(6)), (6, range(6)), (3, [5, 2, 0, 4, 1, 3])):
        shuffled = DataLoader(TensorDataset(images[list(order)]), batch_size=batch_size)
        other_scores, other_maps = run(model, shuffled)
        # Equal up to the float noise of convolutions on batches of other sizes.
        np.testing.assert_allclose(other_scores, scores[list(order)], rtol=1e-5)
        np.testing.assert_allclose(other_maps, maps[list(order)], rtol=1e-4, atol=1e-6)
    twins = HashedDraws(torch.stack([images[0], images[0], images[1]]), 111).uniform((3, 1, 2, 2), torch.device("cpu"))
    assert torch.equal(twins[0], twins[1]) and not torch.equal(twins[0], twins[2])


def test_k_masks_average_k_independent_maps():
    model, loader = setup()
    model.eval()
    images = next(iter(loader))[0]
    draws = HashedDraws(images, 7)
    with torch.no_grad():
        target, _ = model.encode(images)
        student = model.decode(model.project(target))
        expected = sum(anomaly_map(level_distances(target, model.restore(student, draws)), 32)
                       for _ in range(3)) / 3
    maps = run(model, DataLoader(TensorDataset(images), batch_size=4), masks=3, seed=7, sigma=0)[1]
    np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(maps, run(model, loader, masks=1, seed=7, sigma=0)[1][:4])


def test_predicted_maps_are_smoothed_like_scipy_and_scored_by_their_maximum():
    model, loader = setup()
    raw = run(model, loader, sigma=0)[1]
    scores, smoothed = run(model, loader, sigma=4)
    np.testing.assert_allclose(smoothed, np.stack([gaussian_filter(m, 4) for m in raw]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scores, image_score(torch.from_numpy(smoothed)).numpy())


def test_fast_path_computes_the_same_maps_and_losses_to_bf16_precision():
    """What FAST promises: the same function in bf16 and channels_last, not the same bits.

    Measured on a 2-core CPU with oneDNN's AMX, AVX512_CORE_BF16 and AVX2 kernels (three
    seeds each): maps at most 2.9e-4 apart (relative L2), image scores 8.6e-4, the first
    epoch's loss 7e-4 and the second's 1.9e-2. The bounds are about five times those.
    """
    torch.manual_seed(0)
    model = model_for("resnet18")
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    scoring = Scoring((1, 2, 3), 4.0, 1, "max")
    cpu, fast = torch.device("cpu"), execution_for(torch.device("cpu"), fast=True)
    assert fast.dtype == torch.bfloat16 and fast.channels_last
    loader = DataLoader(TensorDataset(images), batch_size=4)
    scores, maps = predict(model, loader, cpu, scoring, Execution(), 111)
    fast_scores, fast_maps = predict(model.to(memory_format=torch.channels_last), loader, cpu, scoring, fast, 111)
    assert not np.array_equal(fast_maps, maps)  # bf16 did run
    assert np.linalg.norm(fast_maps - maps) / np.linalg.norm(maps) < 1.5e-3
    assert np.abs(fast_scores - scores).max() / np.abs(scores).max() < 5e-3

    losses = []
    for execution in (Execution(), fast):
        torch.manual_seed(0)
        trained = model_for("resnet18")
        if execution.channels_last:
            trained = trained.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(trained.trainable_parameters(), lr=0.005, betas=(0.5, 0.999))
        pairs = DataLoader(TensorDataset(images, images.flip(-1)), batch_size=4)
        trainer = Trainer(trained, Step(trained, optimizer, mrkd_objective, execution), execution, cpu)
        losses.append([train_epoch(trainer, pairs, MaskDraws(torch.Generator().manual_seed(1))) for _ in range(2)])
    (first, second), (fast_first, fast_second) = losses
    assert abs(fast_first - first) / first < 4e-3
    assert abs(fast_second - second) / second < 0.1
