"""Tests of NSA image-level masking (dataset/nsa.py) on small synthetic images."""

import numpy as np
import pytest

from dataset import demo
from dataset.folders import VISA_CATEGORIES
from dataset.nsa import (
    CATEGORY_PARAMS,
    MODES,
    TEXTURE_DEFAULTS,
    NSAParams,
    draw_half_widths,
    find_patch,
    half_width_bounds,
    has_constants,
    object_mask,
    params_for,
    poisson_blend,
    synthesize,
    synthesize_with,
)

SIZE = 96
# Bottle-like constants: background near 200, object where |mean - 200| > 60.
BACKGROUND = (200, 60)


def noise_image(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Uniform colour noise: almost every pasted pixel differs from the one it covers."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def disk_image(size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A dark textured disk on a light noisy background, and the disk's mask.

    Object pixels have means in [40, 110] and background pixels in [195, 205],
    so with background (200, 60) the colour alone says object or background.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:size, :size]
    disk = np.hypot(ys - size / 2, xs - size / 2) < 0.3 * size  # (H, W)
    background = rng.integers(195, 206, (size, size, 3))
    obj = rng.integers(40, 111, (size, size, 3))
    return np.where(disk[..., None], obj, background).astype(np.uint8), disk


def ramp_image(size: int = SIZE) -> np.ndarray:
    """Brightness rising from 20 to 235 left to right, with a mild texture.

    A patch moved sideways lands on pixels of another brightness, while its
    gradients match the destination's: plain swapping leaves a seam, Poisson
    blending should not.
    """
    noise = np.random.default_rng(0).normal(0.0, 3.0, (size, size, 3))
    ramp = np.linspace(20.0, 235.0, size)[None, :, None]
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def test_table_and_defaults():
    assert len(CATEGORY_PARAMS) == 15
    assert has_constants("bottle") and not has_constants("btad_01")
    assert params_for("no_such_category") == TEXTURE_DEFAULTS == params_for("carpet")
    assert TEXTURE_DEFAULTS.width_bounds == ((0.03, 0.4), (0.03, 0.4))
    assert TEXTURE_DEFAULTS.num_patches == 4 and TEXTURE_DEFAULTS.background is None
    metal_nut = params_for("metal_nut")
    assert metal_nut == NSAParams(((0.01, 0.05), (0.01, 0.01)), 1, (20, 20), 0.5, 0.25)


def test_demo_and_visa_categories_have_the_texture_defaults_as_their_constants():
    for category in demo.DEMO_CATEGORIES + VISA_CATEGORIES:
        assert has_constants(category)
        assert params_for(category) == TEXTURE_DEFAULTS


def test_unknown_category_uses_texture_defaults():
    image = noise_image()
    unknown = synthesize(image, "no_such_category", np.random.default_rng(3))
    carpet = synthesize(image, "carpet", np.random.default_rng(3))
    np.testing.assert_array_equal(unknown[0], carpet[0])


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="swap, poisson, mixed"):
        synthesize(noise_image(), "carpet", np.random.default_rng(0), mode="blend")


@pytest.mark.parametrize("mode", MODES)
def test_determinism_per_seed(mode):
    image = noise_image()
    first = synthesize(image, "carpet", np.random.default_rng(7), mode)
    again = synthesize(image, "carpet", np.random.default_rng(7), mode)
    other = synthesize(image, "carpet", np.random.default_rng(8), mode)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("category", ["carpet", "bottle", "wood"])
def test_mask_is_exactly_the_changed_pixels(mode, category):
    image = disk_image()[0] if category == "bottle" else noise_image()
    original = image.copy()
    for seed in range(3):
        augmented, mask = synthesize(image, category, np.random.default_rng(seed), mode)
        np.testing.assert_array_equal(image, original)  # input left unmodified
        assert augmented.dtype == np.uint8 and augmented.shape == image.shape
        assert mask.dtype == bool and mask.shape == image.shape[:2]
        np.testing.assert_array_equal(mask, np.any(augmented != image, axis=2))
        assert mask.any()


@pytest.mark.parametrize("category", sorted(CATEGORY_PARAMS))
def test_drawn_half_widths_respect_bounds(category):
    params = params_for(category)
    (h_low, h_high), (w_low, w_high) = params.width_bounds
    height, width = 200, 120
    rng = np.random.default_rng(0)
    draws = np.array([draw_half_widths(height, width, params, rng) for _ in range(500)])
    assert draws[:, 0].min() >= max(1, round(h_low * height))
    assert draws[:, 0].max() <= round(h_high * height)
    assert draws[:, 1].min() >= max(1, round(w_low * width))
    assert draws[:, 1].max() <= round(w_high * width)


def test_pasted_region_size_respects_bounds():
    # One patch on colour noise: the changed pixels are the destination patch.
    params = NSAParams(((0.05, 0.1), (0.15, 0.2)), 1)
    image = noise_image(SIZE)
    heights, widths = [], []
    for seed in range(30):
        _, mask = synthesize_with(image, params, np.random.default_rng(seed))
        rows, cols = np.nonzero(mask)
        heights.append(rows.max() - rows.min() + 1)
        widths.append(cols.max() - cols.min() + 1)
    # Patches span at most 2 x the largest half-width. A patch cut at the border
    # keeps at least 2 x the smallest: its centre is at least that far inside.
    assert 2 * round(0.05 * SIZE) <= min(heights) and max(heights) <= 2 * round(0.1 * SIZE)
    assert 2 * round(0.15 * SIZE) <= min(widths) and max(widths) <= 2 * round(0.2 * SIZE)


def test_half_widths_are_truncated_after_clipping_to_rounded_bounds():
    params = params_for("carpet")
    assert half_width_bounds(params, 256, 256) == ((8, 102), (8, 102))  # 7.68 -> 8, 102.4 -> 102
    truncated_differs_from_rounded = 0
    for seed in range(200):
        fractions = 0.03 + np.random.default_rng(seed).gamma(2.0, 0.05, size=2)
        expected = np.clip(fractions * 256, 8, 102)
        assert draw_half_widths(256, 256, params, np.random.default_rng(seed)) == tuple(int(e) for e in expected)
        truncated_differs_from_rounded += int(expected[0]) != round(expected[0])
    assert truncated_differs_from_rounded > 50
    # Toothbrush's bound of 0.01 x 256 = 2.56 px is rounded to 3 before clipping;
    # truncating the fraction times the side instead would give 2.
    toothbrush = params_for("toothbrush")
    assert {draw_half_widths(256, 256, toothbrush, np.random.default_rng(seed)) for seed in range(20)} == {(3, 3)}


class CountingRng:
    """A numpy Generator that counts the calls of each of its methods."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1
        return getattr(self.rng, name)


def test_patch_size_is_drawn_once_and_only_the_location_is_redrawn():
    # A small disk: most source locations fail the 70 % object check.
    image, disk = disk_image()
    small = np.hypot(*(np.mgrid[:SIZE, :SIZE] - SIZE / 2)) < 0.15 * SIZE
    image = np.where((disk & ~small)[..., None], 200, image).astype(np.uint8)
    params = NSAParams(((0.05, 0.1), (0.05, 0.1)), 1, BACKGROUND, 0.7, 0.25)
    location_draws = []
    for seed in range(10):
        rng = CountingRng(seed)
        first_size = draw_half_widths(SIZE, SIZE, params, np.random.default_rng(seed))
        placement = find_patch((SIZE, SIZE), params, object_mask(image, BACKGROUND), rng)
        assert rng.calls["gamma"] == 1
        location_draws.append(rng.calls["integers"])
        assert placement is not None
        # The accepted patch has the first draw's size: the small disk lies far
        # from the border, so no accepted patch is cut.
        assert (placement.height, placement.width) == (2 * first_size[0], 2 * first_size[1])
    assert min(location_draws) >= 2 and max(location_draws) > 5


def expected_texture_patch(size: int, params: NSAParams, seed: int) -> tuple[int, int, int, int, int, int]:
    """The authors' geometry for one texture patch, drawn from the same stream as nsa.py draws it.

    Returns (height, width, source top, source left, destination top, destination left).
    """
    rng = np.random.default_rng(seed)
    (low_h, high_h), (low_w, high_w) = [(round(low * size), round(high * size)) for low, high in params.width_bounds]
    fractions = 0.03 + rng.gamma(2.0, 0.05, size=2)
    half_h, half_w = int(np.clip(fractions[0] * size, low_h, high_h)), int(np.clip(fractions[1] * size, low_w, high_w))
    center_y, center_x = rng.integers(low_h, size - low_h), rng.integers(low_w, size - low_w)
    top, left = max(center_y - half_h, 0), max(center_x - half_w, 0)
    height, width = min(center_y + half_h, size) - top, min(center_x + half_w, size) - left
    dest_y = rng.integers(height // 2 + 1, size - height // 2 - 1)
    dest_x = rng.integers(width // 2 + 1, size - width // 2 - 1)
    return height, width, top, left, dest_y - height // 2, dest_x - width // 2


def test_source_patches_are_cut_at_the_border_and_pasted_whole():
    # Seed 3: half-widths (31, 13), centre (6, 11): the source box is cut to
    # rows [0, 37) and columns [0, 24), and pasted whole at (20, 31).
    params = NSAParams(((0.03, 0.4), (0.03, 0.4)), 1)
    image = noise_image()
    assert draw_half_widths(SIZE, SIZE, params, np.random.default_rng(3)) == (31, 13)
    assert expected_texture_patch(SIZE, params, 3) == (37, 24, 0, 0, 20, 31)
    for mode in MODES:
        augmented, mask = synthesize_with(image, params, np.random.default_rng(3), mode)
        expected_mask = np.zeros((SIZE, SIZE), dtype=bool)
        expected_mask[20:57, 31:55] = True
        np.testing.assert_array_equal(mask, expected_mask & np.any(augmented != image, axis=2))
        assert mask[20:57, 31:55].mean() > 0.9
        if mode == "swap":
            np.testing.assert_array_equal(augmented[20:57, 31:55], image[:37, :24])
            np.testing.assert_array_equal(mask, expected_mask)

    cut = 0
    for seed in range(60):
        height, width, top, left, dst_top, dst_left = expected_texture_patch(SIZE, params, seed)
        half_h, half_w = draw_half_widths(SIZE, SIZE, params, np.random.default_rng(seed))
        cut += (height, width) != (2 * half_h, 2 * half_w)
        # The destination holds the whole cut box and never touches the border.
        assert 1 <= dst_top and dst_top + height <= SIZE - 1 and 1 <= dst_left and dst_left + width <= SIZE - 1
        augmented, mask = synthesize_with(image, params, np.random.default_rng(seed))
        np.testing.assert_array_equal(augmented[dst_top:dst_top + height, dst_left:dst_left + width],
                                      image[top:top + height, left:left + width])
        box = np.zeros((SIZE, SIZE), dtype=bool)
        box[dst_top:dst_top + height, dst_left:dst_left + width] = True
        np.testing.assert_array_equal(mask, box)  # colour noise: every pasted pixel changes
    assert cut >= 10


def test_object_mask_matches_known_object():
    image, disk = disk_image()
    objects = object_mask(image, BACKGROUND)
    # A 7x7 median only erodes a convex shape along its rim.
    assert not (objects & ~disk).any()
    assert (objects & disk).sum() > 0.95 * disk.sum()


def test_object_paste_changes_only_object_pixels():
    image, disk = disk_image()
    params = NSAParams(((0.05, 0.3), (0.05, 0.3)), 3, BACKGROUND, 0.7, 0.25)
    changed_any = 0
    for seed in range(20):
        augmented, mask = synthesize_with(image, params, np.random.default_rng(seed))
        # A changed pixel is on the destination object, or got its new value
        # from the source object, which is then object-coloured.
        new_mean = augmented.mean(axis=2)
        from_source_object = np.abs(new_mean - BACKGROUND[0]) > BACKGROUND[1]
        assert not (mask & ~disk & ~from_source_object).any()
        changed_any += bool(mask.any())
    assert changed_any >= 15


def test_poisson_blend_is_seamless_for_an_offset_source():
    # A source that is the destination plus a constant has the destination's
    # gradients: normal-gradient blending must give back the destination.
    rng = np.random.default_rng(0)
    destination = rng.uniform(0, 100, (30, 40, 3))
    region = np.zeros((30, 40), dtype=bool)
    region[5:25, 3:30] = True
    region[10:15, 10:20] = False  # a hole: the region need not be a rectangle
    blended = poisson_blend(destination, destination + 120.0, region, mixed=False)
    np.testing.assert_allclose(blended, destination, atol=1e-8)


def boundary_jump(image: np.ndarray, top: int, left: int, bottom: int, right: int) -> float:
    """Mean absolute step across the edges of the rectangle [top, bottom) x [left, right)."""
    image = image.astype(np.float64)
    steps = [
        image[top, left:right] - image[top - 1, left:right],
        image[bottom - 1, left:right] - image[bottom, left:right],
        image[top:bottom, left] - image[top:bottom, left - 1],
        image[top:bottom, right - 1] - image[top:bottom, right],
    ]
    return float(np.mean(np.abs(np.concatenate(steps))))


@pytest.mark.parametrize("mode", ["poisson", "mixed"])
def test_poisson_modes_remove_the_seam(mode):
    image = ramp_image()
    params = NSAParams(((0.1, 0.15), (0.1, 0.15)), 1)
    # Blending draws nothing from rng, so a seed places the patch identically
    # in every mode. Take seeds whose swap leaves a clear seam.
    compared = 0
    for seed in range(40):
        swapped, swap_mask = synthesize_with(image, params, np.random.default_rng(seed), "swap")
        rows, cols = np.nonzero(swap_mask)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        if top == 0 or left == 0 or bottom == SIZE or right == SIZE:
            continue
        swap_jump = boundary_jump(swapped, top, left, bottom, right)
        if swap_jump < 40.0:
            continue
        blended, mask = synthesize_with(image, params, np.random.default_rng(seed), mode)
        assert np.isfinite(blended).all()
        np.testing.assert_array_equal(mask, np.any(blended != image, axis=2))
        blended_jump = boundary_jump(blended, top, left, bottom, right)
        assert blended_jump < 0.2 * swap_jump
        # No larger than the steps the unedited image has there, give or take.
        assert blended_jump < 1.5 * boundary_jump(image, top, left, bottom, right)
        compared += 1
    assert compared >= 3
