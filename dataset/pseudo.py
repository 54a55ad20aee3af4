"""DRD's pseudo-abnormal image: a patch of the image pasted, half-transparent, elsewhere in it.

DRD (Ge et al., Neurocomputing 2025) trains on each normal image and a
pseudo-abnormal copy. Like NSA (dataset/nsa.py) this is a pure function of
(image, rng): all randomness comes from the numpy Generator passed in.
"""

import numpy as np

# Patch sides for 256 x 256 images: (probability, smallest, largest side in pixels),
# drawn uniformly within the chosen range (DRD's public implementation).
SIDE_RANGES = ((0.2, 150, 200), (0.3, 64, 100), (0.5, 10, 32))
# The pasted patch is patch + DESTINATION_WEIGHT x the pixels it covers, on images
# scaled to [0, 1], neither clipped nor quantised: pasted pixels reach 1.2 (DRD's
# public implementation).
DESTINATION_WEIGHT = 0.2
# The image side SIDE_RANGES are given for (DRD's public implementation).
REFERENCE_SIDE = 256


def draw_side(side: int, rng: np.random.Generator) -> int:
    """Side t of the square patch for an image whose shorter side is `side` pixels.

    A range of SIDE_RANGES is chosen with its probability, t is uniform over its
    integers, scaled by side / REFERENCE_SIDE, and kept within [2, side - 1].
    """
    probabilities, lows, highs = zip(*SIDE_RANGES)
    choice = rng.choice(len(SIDE_RANGES), p=probabilities)
    reference = int(rng.integers(lows[choice], highs[choice] + 1))
    return min(max(2, round(reference * side / REFERENCE_SIDE)), side - 1)


def _draw_corner(height: int, width: int, side: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a side x side square lying inside the image, uniform over those."""
    top, left = rng.integers((0, 0), (height - side + 1, width - side + 1))
    return int(top), int(left)


def drd_pseudo_anomaly(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """DRD's pseudo-abnormal image of one normal image.

    A t x t patch is cut from the image at a random source and pasted at an
    independently drawn destination as patch + 0.2 x destination, on the image
    scaled to [0, 1] as float32. As in DRD the sum is neither clipped nor
    rounded: pasted pixels lie in [0, 1.2].
    image: (H, W, 3) uint8, left unmodified.
    Returns (pseudo-abnormal (H, W, 3) float32 on the scale of image / 255, mask
    (H, W) bool of exactly the pixels that changed).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    if min(height, width) < 3:
        raise ValueError(f"the image must be at least 3 x 3 pixels, got {height} x {width}")
    side = draw_side(min(height, width), rng)
    src_top, src_left = _draw_corner(height, width, side, rng)
    dst_top, dst_left = _draw_corner(height, width, side, rng)

    scaled = image.astype(np.float32) / 255.0                                   # (H, W, 3) in [0, 1]
    patch = scaled[src_top:src_top + side, src_left:src_left + side]           # (t, t, 3)
    covered = scaled[dst_top:dst_top + side, dst_left:dst_left + side]         # (t, t, 3)
    result = scaled.copy()
    result[dst_top:dst_top + side, dst_left:dst_left + side] = patch + DESTINATION_WEIGHT * covered
    changed = result != scaled  # (H, W, 3)
    return result, changed[..., 0] | changed[..., 1] | changed[..., 2]
