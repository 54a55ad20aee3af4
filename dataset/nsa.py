"""Natural Synthetic Anomalies (NSA) image-level masking (ILM).

NSA (Schlueter et al., ECCV 2022) cuts a patch out of a normal image and puts
it back somewhere else in the same image. MRKD uses it as its image-level
masking with the authors' configuration: the patch is pasted as is ("swap":
same image, shifted, no resizing, no blending). The NSA paper's own Poisson
blending is available as the "poisson" (normal gradients) and "mixed" (mixed
gradients) modes. The patch geometry is the authors': a size drawn once per
patch, a source box that may be cut at the image border, and a destination
that holds the cut box entirely.

Every function is a pure function of (image, parameters, rng): all randomness
comes from the numpy Generator passed in, so one seed gives one output.
"""

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from dataset.folders import VISA_CATEGORIES

# Patch half-width, as a fraction of the side: GAMMA_OFFSET + Gamma(shape, scale)
# before clipping to the category's bounds (authors' implementation).
GAMMA_OFFSET = 0.03
GAMMA_SHAPE = 2.0
GAMMA_SCALE = 0.05
# Tries to find a valid source (and then destination) before a patch is skipped
# (authors' implementation).
MAX_TRIES = 200
# Side of the median filter that cleans the object mask (authors' implementation).
OBJECT_MEDIAN_SIZE = 7

MODES = ("swap", "poisson", "mixed")


@dataclass(frozen=True)
class NSAParams:
    """Per-category NSA constants of the authors' implementation.

    width_bounds: ((min, max) along height, (min, max) along width) of the patch
        half-width, as fractions of the image side.
    num_patches: at most this many patches are pasted.
    background: (value, threshold) for objects; a pixel is object where
        |mean over RGB - value| > threshold. None for textures (no check).
    min_object_pct: a patch must be more than this fraction object.
    min_overlap_pct: more than this fraction of the source object must land on
        destination object.
    """

    width_bounds: tuple[tuple[float, float], tuple[float, float]]
    num_patches: int
    background: tuple[int, int] | None = None
    min_object_pct: float | None = None
    min_overlap_pct: float | None = None

    def __post_init__(self) -> None:
        has_check = self.background is not None
        if has_check != (self.min_object_pct is not None) or has_check != (self.min_overlap_pct is not None):
            raise ValueError("background, min_object_pct and min_overlap_pct must be given together")


# MVTec AD constants of the authors' implementation, one row each, in the order
# of the reference table: width bounds, patches, background (value, threshold),
# min object pct, min overlap pct.
CATEGORY_PARAMS: dict[str, NSAParams] = {
    "bottle": NSAParams(((0.03, 0.4), (0.03, 0.4)), 3, (200, 60), 0.7, 0.25),
    "cable": NSAParams(((0.01, 0.05), (0.01, 0.1)), 3),
    "capsule": NSAParams(((0.01, 0.05), (0.01, 0.05)), 1, (200, 60), 0.7, 0.25),
    "hazelnut": NSAParams(((0.03, 0.35), (0.03, 0.35)), 3, (20, 20), 0.7, 0.25),
    "metal_nut": NSAParams(((0.01, 0.05), (0.01, 0.01)), 1, (20, 20), 0.5, 0.25),
    "pill": NSAParams(((0.01, 0.05), (0.01, 0.05)), 1, (20, 20), 0.7, 0.25),
    "screw": NSAParams(((0.01, 0.05), (0.01, 0.05)), 1, (200, 60), 0.5, 0.25),
    "toothbrush": NSAParams(((0.01, 0.01), (0.01, 0.01)), 1, (20, 20), 0.25, 0.25),
    "transistor": NSAParams(((0.03, 0.4), (0.03, 0.4)), 3),
    "zipper": NSAParams(((0.01, 0.05), (0.01, 0.01)), 1, (200, 60), 0.7, 0.25),
    "carpet": NSAParams(((0.03, 0.4), (0.03, 0.4)), 4),
    "grid": NSAParams(((0.01, 0.05), (0.01, 0.1)), 4),
    "leather": NSAParams(((0.03, 0.4), (0.03, 0.4)), 4),
    "tile": NSAParams(((0.01, 0.05), (0.01, 0.1)), 4),
    "wood": NSAParams(((0.01, 0.05), (0.01, 0.01)), 4),
}

# Categories outside MVTec (BTAD, MTD, your own) get the carpet/leather texture
# settings: large patches and no background check.
TEXTURE_DEFAULTS = NSAParams(((0.03, 0.4), (0.03, 0.4)), 4)

# The generated demo categories (dataset/demo.py) have no constants of the authors'.
# They take the texture defaults, as an unknown category would, and are listed so that
# a demo run does not report them as categories without constants.
DEMO_PARAMS: dict[str, NSAParams] = {"demo_texture": TEXTURE_DEFAULTS, "demo_object": TEXTURE_DEFAULTS}

# VisA: neither MRKD nor NSA gives constants for it.
# Every category takes the texture defaults, by choice, for these reasons:
# - The object check needs each category's background (value, threshold), measured on its
#   images; this project has not measured VisA's. A wrong value is not harmless: a value
#   close to the object's own colour marks the object as background, every patch is turned
#   away, and ILM silently trains on clean images only (RD4AD).
# - Half of VisA's categories hold several objects per image (capsules, candle, macaroni1,
#   macaroni2) or a board filling most of the frame (pcb1-pcb4), where MVTec's
#   one-object thresholds (min object 25-70 % of the patch) have no tested meaning.
# - BTAD and MTD use the same defaults, so the non-MVTec datasets are treated alike.
# Patches may then fall on the background as well; on VisA's fairly uniform backgrounds
# such a patch changes little, so the cost is fewer effective anomalies, not wrong ones.
VISA_PARAMS: dict[str, NSAParams] = {category: TEXTURE_DEFAULTS for category in VISA_CATEGORIES}
_KNOWN_PARAMS = CATEGORY_PARAMS | DEMO_PARAMS | VISA_PARAMS


def has_constants(category: str) -> bool:
    """True if the category has constants of its own: the authors' (MVTec AD), or the demo's and
    VisA's (the texture defaults, chosen on purpose)."""
    return category in _KNOWN_PARAMS


def params_for(category: str) -> NSAParams:
    """The category's constants, or TEXTURE_DEFAULTS for an unknown category."""
    return _KNOWN_PARAMS.get(category, TEXTURE_DEFAULTS)


def half_width_bounds(params: NSAParams, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The category's half-width bounds in pixels, ((low, high) along height, (low, high) along width).

    The fractions times the side, rounded (authors' implementation). Two guards
    keep small images working and never act on the constants here from 64 px
    up: low is at least one pixel, and high at most (side - 3) // 2, so that the
    largest patch still has a destination centre to draw.
    """
    bounds = []
    for (low, high), side in zip(params.width_bounds, (height, width)):
        cap = (side - 3) // 2
        low_px = min(max(1, round(low * side)), cap)
        bounds.append((low_px, min(max(low_px, round(high * side)), cap)))
    return bounds[0], bounds[1]


def draw_half_widths(height: int, width: int, params: NSAParams, rng: np.random.Generator) -> tuple[int, int]:
    """Draw a patch's half-widths in pixels, (half height, half width).

    Each is (GAMMA_OFFSET + Gamma(GAMMA_SHAPE, GAMMA_SCALE)) x side, clipped to
    the pixel bounds of half_width_bounds, then truncated to an integer, not
    rounded (authors' implementation).
    """
    return _draw_half_widths(height, width, half_width_bounds(params, height, width), rng)


def _draw_half_widths(
    height: int, width: int, bounds: tuple[tuple[int, int], tuple[int, int]], rng: np.random.Generator
) -> tuple[int, int]:
    """draw_half_widths with the pixel bounds already computed."""
    gamma_h, gamma_w = rng.gamma(GAMMA_SHAPE, GAMMA_SCALE, size=2).tolist()
    (low_h, high_h), (low_w, high_w) = bounds
    # Python floats and min/max: ~10x faster than np.clip on scalars.
    half_h = int(min(max((GAMMA_OFFSET + gamma_h) * height, low_h), high_h))
    half_w = int(min(max((GAMMA_OFFSET + gamma_w) * width, low_w), high_w))
    return half_h, half_w


def object_mask(image: np.ndarray, background: tuple[int, int]) -> np.ndarray:
    """Pixels that are object, not background.

    image: (H, W, 3) uint8; background: (value, threshold).
    Returns (H, W) bool: |mean over RGB - value| > threshold, cleaned by a
    OBJECT_MEDIAN_SIZE x OBJECT_MEDIAN_SIZE median filter.
    """
    value, threshold = background
    # Compare channel sums with 3 x the constants: exact integer arithmetic.
    # Adding the channel planes is ~10x faster than image.sum(axis=2).
    channel_sum = image[..., 0].astype(np.int16) + image[..., 1] + image[..., 2]  # (H, W)
    raw = np.abs(channel_sum - 3 * value) > 3 * threshold
    return _binary_median(raw, OBJECT_MEDIAN_SIZE)


def _binary_median(mask: np.ndarray, size: int) -> np.ndarray:
    """Median filter of a bool image with edge replication, (H, W) -> (H, W).

    On a binary image the median is a majority vote, so a box count gives it
    exactly; summing shifted slices is ~200x faster than
    scipy.ndimage.median_filter at 256x256. Counts fit uint8 for size <= 15.
    """
    radius = size // 2
    padded = np.pad(mask, radius, mode="edge").view(np.uint8)  # (H + 2r, W + 2r)
    height, width = mask.shape
    column_counts = sum(padded[k:k + height] for k in range(size))  # (H, W + 2r)
    counts = sum(column_counts[:, k:k + width] for k in range(size))  # (H, W)
    return counts > (size * size) // 2


@dataclass(frozen=True)
class Placement:
    """Where one patch is cut and pasted: a (height, width) box in pixels.

    The source box is cut from the input image at (source_top, source_left) and
    pasted with its top-left corner at (destination_top, destination_left).
    paste: (height, width) bool mask of the pixels to paste, None for all of them.
    """

    height: int
    width: int
    source_top: int
    source_left: int
    destination_top: int
    destination_left: int
    paste: np.ndarray | None = None

    @property
    def source(self) -> tuple[slice, slice]:
        """Index of the source box: image[placement.source] is (height, width, C)."""
        return (slice(self.source_top, self.source_top + self.height),
                slice(self.source_left, self.source_left + self.width))

    @property
    def destination(self) -> tuple[slice, slice]:
        """Index of the destination box, (height, width) like the source box."""
        return (slice(self.destination_top, self.destination_top + self.height),
                slice(self.destination_left, self.destination_left + self.width))


def _draw_source(
    height: int, width: int, half_h: int, half_w: int, low_h: int, low_w: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A source box (top, left, height, width) for a patch of the given half-widths.

    The centre is uniform in [low, side - low) per axis, where low is the
    category's smallest half-width, not the drawn one; the box
    [centre - half, centre + half) is then clipped to the image, so a large patch
    near the border is cut (authors' implementation).
    """
    # Two scalar draws: ~3x faster than one draw of a pair.
    center_y, center_x = int(rng.integers(low_h, height - low_h)), int(rng.integers(low_w, width - low_w))
    top, left = max(center_y - half_h, 0), max(center_x - half_w, 0)
    return top, left, min(center_y + half_h, height) - top, min(center_x + half_w, width) - left


def _draw_destination(height: int, width: int, patch_h: int, patch_w: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner for pasting a (patch_h, patch_w) box; the box lies inside the image.

    The centre is uniform in [patch_h // 2 + 1, height - patch_h // 2 - 1), and
    likewise along the width (authors' implementation); the box starts
    patch_h // 2 above it. The box therefore never touches the image's first or
    last row or column.
    """
    center_y = int(rng.integers(patch_h // 2 + 1, height - patch_h // 2 - 1))
    center_x = int(rng.integers(patch_w // 2 + 1, width - patch_w // 2 - 1))
    return center_y - patch_h // 2, center_x - patch_w // 2


def find_patch(
    image_shape: tuple[int, int],
    params: NSAParams,
    objects: np.ndarray | None,
    rng: np.random.Generator,
) -> Placement | None:
    """Choose one patch's size, source and destination, or None if none is found.

    objects: (H, W) bool object mask of the input image, or None for textures.
    The size is drawn once; only the source and then the destination location
    are redrawn, up to MAX_TRIES times each, until the object checks pass
    (authors' implementation).
    """
    height, width = image_shape
    bounds = half_width_bounds(params, height, width)
    half_h, half_w = _draw_half_widths(height, width, bounds, rng)
    (low_h, _), (low_w, _) = bounds
    for _ in range(MAX_TRIES):
        top, left, patch_h, patch_w = _draw_source(height, width, half_h, half_w, low_h, low_w, rng)
        if objects is None:
            break
        source_objects = objects[top:top + patch_h, left:left + patch_w]
        if source_objects.mean() > params.min_object_pct:
            break
    else:
        return None

    # Like the reference, nothing but the object checks rejects a destination: one
    # equal to the source (rare) is kept and pastes the patch onto itself.
    for _ in range(MAX_TRIES):
        dst_top, dst_left = _draw_destination(height, width, patch_h, patch_w, rng)
        if objects is None:
            return Placement(patch_h, patch_w, top, left, dst_top, dst_left)
        # The reference also asks the source object to cover more than
        # min_object_pct of the destination patch; without resizing it is the
        # same patch as the accepted source, so only the overlap is checked.
        destination_objects = objects[dst_top:dst_top + patch_h, dst_left:dst_left + patch_w]
        overlap = np.count_nonzero(source_objects & destination_objects) / np.count_nonzero(source_objects)
        if overlap > params.min_overlap_pct:
            return Placement(patch_h, patch_w, top, left, dst_top, dst_left, source_objects | destination_objects)
    return None


def _crop_with_ring(image: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """Crop (height, width) at (top, left) plus a one-pixel ring, edge-replicated outside the image.

    image: (H, W, C). Returns (height + 2, width + 2, C) float64.
    Boxes lie inside the image and destinations never touch its border, so only a
    source box cut at the border needs the replicated ring: its guidance across
    the image's edge is then zero.
    """
    image_h, image_w = image.shape[:2]
    crop_top, crop_left = max(top - 1, 0), max(left - 1, 0)
    crop_bottom, crop_right = min(top + height + 1, image_h), min(left + width + 1, image_w)
    crop = image[crop_top:crop_bottom, crop_left:crop_right].astype(np.float64)
    pad = (
        (crop_top - (top - 1), top + height + 1 - crop_bottom),
        (crop_left - (left - 1), left + width + 1 - crop_right),
        (0, 0),
    )
    return np.pad(crop, pad, mode="edge")


def poisson_blend(destination: np.ndarray, source: np.ndarray, region: np.ndarray, mixed: bool) -> np.ndarray:
    """Poisson image editing (Perez et al. 2003) as NSA blends its patches.

    Solves, on the pixels of region, the discrete Poisson equation
    |N_p| f_p - sum_{q in N_p, q in region} f_q
        = sum_{q in N_p, q not in region} destination_q + sum_{q in N_p} v_pq,
    i.e. f takes the destination's values just outside the region (Dirichlet
    boundary) and follows the guidance field v inside. v_pq = source_p - source_q
    (normal gradients), or with mixed=True whichever of the source and
    destination differences is larger in magnitude, per pixel pair and channel.

    destination, source: (h, w, C) float, aligned; region: (h, w) bool, False on
    the outer one-pixel ring so every region pixel has four neighbours.
    Returns (h, w, C) float64: destination outside region, f inside.
    """
    ys, xs = np.nonzero(region)  # (n,)
    count = ys.size
    index = np.full(region.shape, -1, dtype=np.int64)
    index[ys, xs] = np.arange(count)

    rows = [np.arange(count)]
    cols = [np.arange(count)]
    data = [np.full(count, 4.0)]
    rhs = np.zeros((count, destination.shape[2]))  # (n, C)
    dest_p = destination[ys, xs]
    source_p = source[ys, xs]
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        qy, qx = ys + dy, xs + dx
        neighbour = index[qy, qx]  # (n,), -1 where q is on the boundary
        inside = neighbour >= 0
        rows.append(np.nonzero(inside)[0])
        cols.append(neighbour[inside])
        data.append(np.full(rows[-1].size, -1.0))
        dest_q = destination[qy, qx]
        guidance = source_p - source[qy, qx]
        if mixed:
            dest_difference = dest_p - dest_q
            guidance = np.where(np.abs(dest_difference) > np.abs(guidance), dest_difference, guidance)
        rhs += guidance + np.where(inside[:, None], 0.0, dest_q)

    laplacian = scipy.sparse.csc_array(
        (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(count, count)
    )
    blended = destination.astype(np.float64, copy=True)
    # The matrix is symmetric: minimum degree on A^T + A fills in about half as
    # much as splu's default COLAMD ordering on grid Laplacians.
    blended[ys, xs] = scipy.sparse.linalg.splu(laplacian, permc_spec="MMD_AT_PLUS_A").solve(rhs)
    return blended


def synthesize_with(
    image: np.ndarray, params: NSAParams, rng: np.random.Generator, mode: str = "swap"
) -> tuple[np.ndarray, np.ndarray]:
    """NSA synthesis with explicit parameters; see synthesize()."""
    if mode not in MODES:
        raise ValueError(f"unknown NSA mode {mode!r}; valid modes are {', '.join(MODES)}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")

    height, width = image.shape[:2]
    # The object mask is computed once, on the input image, and serves as both
    # the source and destination mask for every patch (same-image NSA).
    objects = None if params.background is None else object_mask(image, params.background)
    result = image.copy()
    for patch_number in range(params.num_patches):
        if patch_number > 0 and rng.random() >= 0.5:
            continue
        placement = find_patch((height, width), params, objects, rng)
        if placement is None:
            continue
        # Source patches come from the input image; destinations accumulate the
        # previous patches.
        target = result[placement.destination]  # view, (h, w, 3)
        paste = placement.paste
        if mode == "swap":
            patch = image[placement.source]  # (h, w, 3)
            if paste is None:
                target[...] = patch
            else:
                target[paste] = patch[paste]
            continue
        patch_h, patch_w = placement.height, placement.width
        region = np.zeros((patch_h + 2, patch_w + 2), dtype=bool)
        region[1:-1, 1:-1] = True if paste is None else paste
        blended = poisson_blend(
            _crop_with_ring(result, placement.destination_top, placement.destination_left, patch_h, patch_w),
            _crop_with_ring(image, placement.source_top, placement.source_left, patch_h, patch_w),
            region,
            mixed=mode == "mixed",
        )
        target[...] = np.clip(np.rint(blended[1:-1, 1:-1]), 0, 255).astype(np.uint8)
    # OR of the channel planes: ~10x faster than np.any(..., axis=2).
    changed = result != image  # (H, W, 3)
    return result, changed[..., 0] | changed[..., 1] | changed[..., 2]


def synthesize(
    image: np.ndarray, category: str, rng: np.random.Generator, mode: str = "swap"
) -> tuple[np.ndarray, np.ndarray]:
    """NSA image-level masking (ILM) of one image with the category's constants.

    image: (H, W, 3) uint8, left unmodified. mode: "swap" (the authors' MRKD
    configuration), "poisson" or "mixed" (NSA's seamless blending).
    Returns (augmented (H, W, 3) uint8, mask (H, W) bool of exactly the pixels
    that changed). All randomness is drawn from rng.
    """
    return synthesize_with(image, params_for(category), rng, mode)
