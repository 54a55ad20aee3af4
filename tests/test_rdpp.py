"""RD++'s parts: the multi-projection layer, its losses and objective, the simplex-noise pseudo-anomalies."""
import math

import geomloss
import numpy as np
import pytest
import torch
from torch import nn

from dataset.simplex import (NOISE_SCALE, OCTAVES, PERSISTENCE, fractal_noise, rdpp_noisy_image,
                             simplex_noise)
from model import rdpp
from tests.helpers import model_for, seeded_synthesis
from model.generator import MaskDraws
from model.loss import distillation_loss
from model.projection import MultiProjection
from model.rdpp import (SINKHORN, batch_permutation, contrast_loss, projection_loss, rdpp_loss, rdpp_objective,
                        reconstruction_loss, ssot_loss)


def count(module):
    return sum(p.numel() for p in module.parameters())


def projection_count_by_hand(channels):
    """Four 3x3 convs with bias, C -> C/2 -> C/4 -> C/2 -> C per level; InstanceNorm without affine adds none."""
    total = 0
    for c in channels:
        widths = (c, c // 2, c // 4, c // 2, c)
        total += sum(9 * i * o + o for i, o in zip(widths, widths[1:]))
    return total


@pytest.mark.parametrize("channels, expected", [((256, 512, 1024), 15_486_912),   # wide_resnet50_2
                                                ((64, 128, 256), 968_688)])        # resnet18
def test_projection_parameter_counts(channels, expected):
    projection = MultiProjection(channels)
    assert projection_count_by_hand(channels) == expected
    assert count(projection) == expected


def test_projection_layers_are_the_authors_and_keep_shapes():
    projection = MultiProjection((8, 16, 32))
    units = list(projection.levels[0].layers)
    assert [u[0].out_channels for u in units] == [4, 2, 4, 8]
    for conv, norm, act in units:  # every unit, the last too: conv with bias, InstanceNorm, LeakyReLU
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is not None
        assert isinstance(norm, nn.InstanceNorm2d) and not norm.affine and not norm.track_running_stats
        assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.01
    features = [torch.randn(2, c, s, s) for c, s in ((8, 8), (16, 4), (32, 2))]
    assert [p.shape for p in projection(features)] == [f.shape for f in features]


def features(seed, channels=(4, 6, 8), sizes=(4, 3, 2), batch=3):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, s, s, generator=generator) for c, s in zip(channels, sizes)]


def cosine(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_reconstruction_loss_is_one_minus_the_channel_cosine_at_each_position():
    noisy, normal = features(0), features(1)
    expected = 0.0
    for a, n in zip(noisy, normal):
        batch, _, height, width = a.shape
        expected += sum(1 - cosine(a[b, :, y, x], n[b, :, y, x])
                        for b in range(batch) for y in range(height) for x in range(width)) / (batch * height * width)
    assert reconstruction_loss(noisy, normal).item() == pytest.approx(expected, rel=1e-5)
    assert reconstruction_loss(normal, normal).item() == pytest.approx(0, abs=1e-6)


def test_contrast_loss_is_the_authors_cosine_embedding_loss_with_target_minus_one():
    teacher_noisy, normal = features(2), features(3)
    # Make some pairs similar (cos > 0.5) so that the hinge is active for them, and others not.
    normal = [n.clone() for n in normal]
    for t, n in zip(teacher_noisy, normal):
        n[0] = t[0] + 0.1 * n[0]
    by_hand = sum(sum(max(0.0, cosine(t[b], n[b]) - 0.5) for b in range(len(t))) / len(t)
                  for t, n in zip(teacher_noisy, normal))
    authors = nn.CosineEmbeddingLoss(margin=0.5)
    as_authors = sum(authors(t.flatten(1), n.flatten(1), -torch.ones(len(t))) for t, n in zip(teacher_noisy, normal))
    assert by_hand > 0.3  # the similar pairs count
    assert contrast_loss(teacher_noisy, normal).item() == pytest.approx(by_hand, rel=1e-5)
    assert contrast_loss(teacher_noisy, normal).item() == pytest.approx(as_authors.item(), rel=1e-5)


def sinkhorn_divergence_by_hand(x, y, blur, iterations=500):
    """Debiased entropic OT with uniform weights, cost |x - y|^2 / 2, epsilon = blur^2, float64,
    by plain log-domain Sinkhorn at fixed epsilon: OT(x, y) - OT(x, x) / 2 - OT(y, y) / 2."""
    eps = blur ** 2

    def ot(a, b):
        cost = 0.5 * torch.cdist(a, b) ** 2
        log_wa, log_wb = -math.log(len(a)), -math.log(len(b))
        f, g = torch.zeros(len(a), dtype=a.dtype), torch.zeros(len(b), dtype=a.dtype)
        for _ in range(iterations):
            f = -eps * torch.logsumexp((g[None, :] - cost) / eps + log_wb, dim=1)
            g = -eps * torch.logsumexp((f[:, None] - cost) / eps + log_wa, dim=0)
        return f.mean() + g.mean()

    return ot(x, y) - 0.5 * ot(x, x) - 0.5 * ot(y, y)


def test_sinkhorn_is_the_authors_samples_loss_and_a_debiased_sinkhorn_divergence():
    generator = torch.Generator().manual_seed(0)
    # Spread comparable to the blur, so that the divergence depends on it: +-0.01 in blur moves it by 10 %.
    x = 0.2 * torch.rand(4, 2, generator=generator, dtype=torch.float64)
    y = 0.2 * torch.rand(3, 2, generator=generator, dtype=torch.float64) + 0.06
    authors = geomloss.SamplesLoss(loss="sinkhorn", p=2, blur=0.05, reach=None, diameter=10000000, scaling=0.95,
                                   truncate=10, debias=True, backend="auto")
    ours = SINKHORN(x, y).item()
    assert ours == pytest.approx(authors(x, y).item(), rel=1e-12)
    assert ours == pytest.approx(sinkhorn_divergence_by_hand(x, y, 0.05).item(), rel=1e-3)


@pytest.fixture
def fast_sinkhorn(monkeypatch):
    """A coarse annealing (scaling 0.5, not 375 steps of 0.95) for tests of how the losses combine, not of the divergence."""
    monkeypatch.setattr(rdpp, "SINKHORN", geomloss.SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5))
    return rdpp.SINKHORN


def test_ssot_loss_is_the_divergence_between_the_softmaxed_batch_and_its_shuffled_copy(fast_sinkhorn):
    normal = features(4)
    permutation = torch.tensor([2, 0, 1])
    flat = [torch.softmax(f.flatten(1), dim=1) for f in normal]
    expected = sum(fast_sinkhorn(phi, phi[permutation]) for phi in flat)
    assert ssot_loss(normal, permutation).item() == pytest.approx(expected.item(), abs=1e-12)


def test_ssot_loss_and_its_gradient_vanish_as_the_authors_compute_it():
    # A permutation leaves the uniform point cloud the same measure, so the debiased divergence is 0.
    normal = [f.requires_grad_() for f in features(4, batch=4)]
    loss = ssot_loss(normal, torch.tensor([3, 2, 0, 1]))
    loss.backward()
    assert abs(loss.item()) < 1e-7
    assert max(f.grad.abs().max().item() for f in normal) < 1e-7


def test_projection_and_total_loss_weigh_their_parts_as_the_authors(fast_sinkhorn):
    teacher_normal, student, teacher_noisy, projected_noisy, projected_normal = (features(s) for s in range(5, 10))
    permutation = torch.tensor([1, 2, 0])
    parts = (ssot_loss(projected_normal, permutation), reconstruction_loss(projected_noisy, projected_normal),
             contrast_loss(teacher_noisy, projected_normal))
    expected_projection = (parts[0] + 0.01 * parts[1] + 0.1 * parts[2]) / 1.11
    torch.testing.assert_close(projection_loss(teacher_noisy, projected_noisy, projected_normal, permutation),
                               expected_projection)
    torch.testing.assert_close(
        rdpp_loss(teacher_normal, student, teacher_noisy, projected_noisy, projected_normal, permutation),
        distillation_loss(teacher_normal, student) + 0.2 * expected_projection)


def test_batch_permutation_follows_the_draws():
    first = batch_permutation(8, torch.device("cpu"), MaskDraws(torch.Generator().manual_seed(0)))
    again = batch_permutation(8, torch.device("cpu"), MaskDraws(torch.Generator().manual_seed(0)))
    other = batch_permutation(8, torch.device("cpu"), MaskDraws(torch.Generator().manual_seed(1)))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert sorted(first.tolist()) == list(range(8))
    assert sorted(batch_permutation(8, torch.device("cpu")).tolist()) == list(range(8))


def test_rdpp_objective_composes_the_parts_and_trains_projection_bottleneck_and_student(fast_sinkhorn):
    torch.manual_seed(0)
    model = model_for("resnet18", flm=False, projection=True)
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(3, 3, 32, 32, generator=generator)
    noisy = clean + torch.randn(3, 3, 32, 32, generator=generator)
    loss = rdpp_objective(model, clean, noisy, MaskDraws(torch.Generator().manual_seed(3)))
    with torch.no_grad():
        teacher_normal, teacher_noisy = model.teacher(clean), model.teacher(noisy)
        projected_normal, projected_noisy = model.projection(teacher_normal), model.projection(teacher_noisy)
        student = model.student(model.bottleneck(projected_normal))
        permutation = batch_permutation(3, clean.device, MaskDraws(torch.Generator().manual_seed(3)))
        expected = rdpp_loss(teacher_normal, student, teacher_noisy, projected_noisy, projected_normal, permutation)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    for part in (model.projection, model.bottleneck, model.student):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters() if p.dim() > 1)
    assert all(p.grad is None for p in model.teacher.parameters())
    # Test time takes the same projection: the student decodes B(P(f_T)).
    assert model.trained_parts()["projection"] is model.projection
    with torch.no_grad():
        decoded = model.decode(model.project(teacher_normal))
    assert all(torch.allclose(a, b) for a, b in zip(decoded, student))


# ---- simplex noise and the noisy image ----

def test_simplex_noise_is_zero_at_grid_vertices_and_bounded():
    permutation = np.random.default_rng(0).permutation(256)
    # Points (i, j, k) with i + j + k a multiple of 3 are vertices of the simplex grid.
    vertices = np.array([[0, 0, 0], [1, 1, 1], [2, -1, 2], [5, 3, 1], [-4, 0, 1]], dtype=np.float64)
    np.testing.assert_allclose(simplex_noise(vertices, permutation), 0, atol=1e-12)
    values = simplex_noise(np.random.default_rng(1).uniform(-20, 20, (20000, 3)), permutation)
    assert np.abs(values).max() < 1.0
    assert values.std() == pytest.approx(0.314, rel=0.1) and abs(values.mean()) < 0.02


def test_fractal_noise_is_deterministic_per_seed_shaped_and_bounded():
    first = fractal_noise((3, 20, 24), np.random.default_rng(5))
    assert np.array_equal(first, fractal_noise((3, 20, 24), np.random.default_rng(5)))
    assert not np.array_equal(first, fractal_noise((3, 20, 24), np.random.default_rng(6)))
    assert first.shape == (3, 20, 24) and first.dtype == np.float64
    bound = sum(PERSISTENCE ** k for k in range(OCTAVES))  # each octave stays within +-1
    samples = np.stack([fractal_noise((3, 31, 31), np.random.default_rng(seed)) for seed in range(20)])
    assert np.abs(samples).max() < bound
    assert 0.3 < samples.std() < 0.55 and abs(samples.mean()) < 0.1
    # The channels are neighbouring slices of one field, as the authors': strongly correlated.
    assert np.corrcoef(samples[:, 0].ravel(), samples[:, 1].ravel())[0, 1] > 0.9


def test_noisy_image_is_deterministic_per_seed_and_confined_to_its_rectangle():
    scaled, first, mask = seeded_synthesis(rdpp_noisy_image)
    assert first.shape == (64, 64, 3)
    changed = (first != scaled).any(axis=2)
    assert changed.any() and not (changed & ~mask).any()
    assert np.array_equal(first[~mask], scaled[~mask])
    assert np.abs(first - scaled).max() <= NOISE_SCALE * sum(PERSISTENCE ** k for k in range(OCTAVES))


def rectangle(mask):
    """(top, left, height, width) of the mask, checking that it is one filled rectangle."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    top, left, height, width = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert mask.sum() == height * width
    return top, left, height, width


def test_noisy_rectangles_at_256_pixels_are_the_authors():
    image = np.full((256, 256, 3), 128, dtype=np.uint8)
    boxes = np.array([rectangle(rdpp_noisy_image(image, np.random.default_rng(seed))[1]) for seed in range(100)])
    top, left, height, width = boxes.T
    assert height.min() == 10 and height.max() == 31 and width.min() == 10 and width.max() == 31
    assert not np.array_equal(height, width)  # drawn independently
    assert top.min() >= 1 and left.min() >= 1                       # a free first row and column
    assert (top + height).max() <= 255 and (left + width).max() <= 255  # and a free last one


def test_noisy_rectangles_scale_with_the_image():
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    boxes = np.array([rectangle(rdpp_noisy_image(image, np.random.default_rng(seed))[1]) for seed in range(100)])
    assert boxes[:, 2:].min() >= 2 and boxes[:, 2:].max() <= 8  # round(10 / 4) ... round(31 / 4)
    with pytest.raises(ValueError, match="too small"):
        rdpp_noisy_image(np.zeros((2, 2, 3), dtype=np.uint8), np.random.default_rng(0))
