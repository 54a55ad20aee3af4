"""DRD's parts: the MFCF bottleneck, its losses, the refined image score and the pseudo-abnormal image."""
import math

import numpy as np
import pytest
import torch

from dataset.pseudo import draw_side, drd_pseudo_anomaly
from model.bottleneck import CascadeFusionBottleneck, OneClassBottleneck
from model.drd import (
    add_noise,
    channel_cosine_loss,
    drd_loss,
    kd_loss,
    pixel_cosine_loss,
    refined_image_score,
    restoration_loss,
    segmentation_loss,
)
from model.teacher import Teacher
from tests.helpers import seeded_synthesis


def count(module):
    return sum(p.numel() for p in module.parameters())


def build(bottleneck, teacher):
    return bottleneck(teacher.block, teacher.channels, teacher.width_per_group)


def test_mfcf_parameter_count_and_output_shape_for_the_wide_net():
    with torch.device("meta"):  # shapes without values: nothing to initialise
        wide_teacher = Teacher("wide_resnet50_2", weights=None)
        mfcf = build(CascadeFusionBottleneck, wide_teacher)
        assert count(build(OneClassBottleneck, wide_teacher)) == 58_885_120
        output = mfcf(wide_teacher(torch.randn(2, 3, 64, 64)))
    assert count(mfcf) == 90_344_448
    assert tuple(output.shape) == (2, 2048, 2, 2) and mfcf.out_channels == 2048


def test_mfcf_follows_a_resnet18_teacher():
    teacher = Teacher("resnet18", weights=None)
    mfcf = build(CascadeFusionBottleneck, teacher)
    assert len(mfcf.stage) == 2 and mfcf.stage[0].conv1.in_channels == 256
    output = mfcf(teacher(torch.randn(2, 3, 64, 64)))
    assert tuple(output.shape) == (2, 512, 2, 2) and mfcf.out_channels == 512


def features(seed, channels=(4, 6, 8), sizes=(8, 4, 2), batch=2):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, s, s, generator=generator) for c, s in zip(channels, sizes)]


def test_kd_and_restoration_losses_vanish_only_for_identical_features():
    teacher, other = features(0), features(1)
    assert kd_loss(teacher, teacher).item() == pytest.approx(0, abs=1e-6)
    assert restoration_loss(teacher, teacher).item() == pytest.approx(0, abs=1e-6)
    assert kd_loss(teacher, other).item() > 0.1
    assert restoration_loss(teacher, other).item() > 0.1
    torch.testing.assert_close(kd_loss(teacher, other),
                               pixel_cosine_loss(teacher, other) + channel_cosine_loss(teacher, other))
    torch.testing.assert_close(restoration_loss(teacher, other), channel_cosine_loss(teacher, other))


def cosine(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_pixel_and_channel_terms_equal_their_definitions():
    teacher, student = features(2), features(3)
    pixel = channel = 0.0
    for t, s in zip(teacher, student):
        batch, channels, height, width = t.shape
        pixel += sum(1 - cosine(t[b, :, y, x], s[b, :, y, x])
                     for b in range(batch) for y in range(height) for x in range(width)) / (batch * height * width)
        channel += sum(1 - cosine(t[b, c], s[b, c]) for b in range(batch) for c in range(channels)) / (batch * channels)
    assert pixel_cosine_loss(teacher, student).item() == pytest.approx(pixel, rel=1e-5)
    assert channel_cosine_loss(teacher, student).item() == pytest.approx(channel, rel=1e-5)
    assert pixel != pytest.approx(channel, rel=1e-2)  # the two terms measure different things


def test_segmentation_loss_on_a_tiny_case():
    # Levels 1 and 3 at 1x1 (upsampled to constant maps), level 2 at the image size 2x2.
    east, north = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1), torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    teacher = [east, east.expand(1, 2, 2, 2), east]
    student = [north,                                                                      # distance 1
               torch.tensor([[[1.0, 0.0], [-1.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]]])[None],  # pixels (1,1) (0,1) (-1,0) (1,1)
               east + north]                                                               # distance 1 - 1/sqrt(2)
    level2 = [1 - 1 / math.sqrt(2), 1.0, 2.0, 1 - 1 / math.sqrt(2)]
    predicted = [(1 + d + 1 - 1 / math.sqrt(2)) / 3 for d in level2]
    normal = torch.ones(1, 3, 2, 2)
    pseudo = torch.tensor([[2.0, 2.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]).T.reshape(1, 3, 2, 2)
    target = [0.0, 1 - 1 / math.sqrt(3), 1 - 1 / math.sqrt(3), 1 - 2 / math.sqrt(6)]
    expected = 0.1 * sum(abs(p - t) for p, t in zip(predicted, target)) / 4
    assert segmentation_loss(teacher, student, pseudo, normal).item() == pytest.approx(expected, rel=1e-5)
    assert segmentation_loss(teacher, teacher, normal, normal).item() == pytest.approx(0, abs=1e-6)
    assert segmentation_loss(teacher, student, normal, normal).item() > 0
    assert segmentation_loss(teacher, teacher, pseudo, normal).item() > 0


def test_drd_loss_sums_its_three_losses():
    teacher, student, noisy, pseudo_student = features(4), features(5), features(6), features(7)
    normal_images, pseudo_images = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    expected = (kd_loss(teacher, student) + restoration_loss(teacher, pseudo_student)
                + segmentation_loss(noisy, pseudo_student, pseudo_images, normal_images))
    torch.testing.assert_close(drd_loss(teacher, student, noisy, pseudo_student, normal_images, pseudo_images), expected)
    assert drd_loss(teacher, teacher, teacher, teacher, normal_images, normal_images).item() == pytest.approx(0, abs=1e-5)


def test_add_noise_has_the_given_std_and_follows_the_generator():
    base = [torch.zeros(2, 8, 32, 32), torch.ones(2, 4, 16, 16)]
    noisy = add_noise(base, 0.1, torch.Generator().manual_seed(0))
    again = add_noise(base, 0.1, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(noisy, again))
    assert [n.shape for n in noisy] == [b.shape for b in base]
    assert (noisy[0] - base[0]).std().item() == pytest.approx(0.1, rel=0.05)
    assert (noisy[1] - base[1]).mean().item() == pytest.approx(0, abs=0.01)


def test_refined_image_score_picks_the_least_varying_upsampled_level_per_image():
    size = 8
    generator = torch.Generator().manual_seed(0)
    # Image 0: level 2 is constant (0.3), so its upsampled map varies least; image 1: level 1 (0.1).
    level1 = torch.stack([torch.rand(4, 4, generator=generator), torch.full((4, 4), 0.1)])
    level2 = torch.stack([torch.full((2, 2), 0.3), torch.rand(2, 2, generator=generator)])
    level3 = torch.rand(2, 2, 2, generator=generator) + 0.5
    ramp = torch.linspace(0, 1, size * size).view(size, size)
    smoothed = torch.stack([ramp * 2, ramp * 5])                           # maxima 2 and 5
    expected = torch.tensor([(1 + 0.3) * 2, (1 + 0.1) * 5])
    level_maps = [level1, level2, level3]
    torch.testing.assert_close(refined_image_score(level_maps, smoothed), expected)
    for i in range(2):
        single = refined_image_score([m[i:i + 1] for m in level_maps], smoothed[i:i + 1])
        torch.testing.assert_close(single, expected[i:i + 1])


def banded_image(size, seed):
    """Values in [100, 120]: patch + 0.2 x destination exceeds the destination, so every pasted pixel changes."""
    return np.random.default_rng(seed).integers(100, 121, (size, size, 3), dtype=np.uint8)


def pasted_square(mask):
    """(top, left, side) of the mask's bounding box, checking that the mask fills it."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    top, left, side = rows[0], cols[0], rows[-1] - rows[0] + 1
    assert cols[-1] - cols[0] + 1 == side and mask.sum() == side * side
    return top, left, side


def test_pseudo_anomaly_is_deterministic_per_seed_and_masks_exactly_the_changed_pixels():
    scaled, first, mask = seeded_synthesis(drd_pseudo_anomaly)
    assert mask.any()
    assert np.array_equal(mask, (first != scaled).any(axis=2))
    assert np.array_equal(first[~mask], scaled[~mask])  # the rest is the image on the [0, 1] scale


def test_pseudo_patch_sides_fall_in_the_three_ranges_at_256_pixels():
    sides = np.array([pasted_square(drd_pseudo_anomaly(banded_image(256, 0), np.random.default_rng(seed))[1])[2]
                      for seed in range(300)])
    assert sides.min() >= 10 and sides.max() <= 200
    in_ranges = [(sides >= low) & (sides <= high) for low, high in ((150, 200), (64, 100), (10, 32))]
    assert all(r.any() for r in in_ranges) and np.logical_or.reduce(in_ranges).all()


def test_pseudo_patch_side_ranges_have_their_probabilities():
    rng = np.random.default_rng(0)
    sides = np.array([draw_side(256, rng) for _ in range(3000)])
    shares = [((sides >= low) & (sides <= high)).mean() for low, high in ((150, 200), (64, 100), (10, 32))]
    # 3000 draws: a share's standard deviation is at most 0.0092, the tolerance is over 3 of them.
    assert shares == pytest.approx([0.2, 0.3, 0.5], abs=0.03)


def test_pseudo_patch_sides_scale_with_the_image():
    sides = [draw_side(128, np.random.default_rng(seed)) for seed in range(200)]
    assert 5 <= min(sides) and max(sides) <= 100 and max(sides) >= 75
    assert all(2 <= draw_side(8, np.random.default_rng(seed)) <= 7 for seed in range(50))


@pytest.mark.parametrize("seed", range(5))
def test_pseudo_patch_is_a_patch_of_the_image_plus_a_fifth_of_the_destination(seed):
    image = banded_image(64, seed)
    pseudo, mask = drd_pseudo_anomaly(image, np.random.default_rng(seed))
    top, left, side = pasted_square(mask)
    scaled = image.astype(np.float64) / 255
    destination = scaled[top:top + side, left:left + side]
    windows = np.lib.stride_tricks.sliding_window_view(scaled, (side, side), axis=(0, 1))  # (., ., 3, t, t)
    windows = windows.transpose(0, 1, 3, 4, 2)                                            # (., ., t, t, 3)
    blended = windows + 0.2 * destination
    matches = (np.abs(blended - pseudo[top:top + side, left:left + side]) < 1e-6).all(axis=(2, 3, 4))
    assert matches.any()


def test_pseudo_patch_is_neither_clipped_nor_quantised():
    # Bright pixels: patch + 0.2 x destination exceeds 1 everywhere in the pasted square.
    image = np.random.default_rng(0).integers(230, 256, (64, 64, 3), dtype=np.uint8)
    pseudo, mask = drd_pseudo_anomaly(image, np.random.default_rng(1))
    pasted = pseudo[mask]                                           # (n, 3)
    assert pasted.min() > 1.0 and pasted.max() > 1.15 and pasted.max() <= 1.2 + 1e-6
    # Rounded to uint8 levels, the values would be multiples of 1 / 255.
    levels = pasted.astype(np.float64) * 255
    assert np.abs(levels - np.rint(levels)).mean() > 0.1
