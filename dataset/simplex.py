"""RD++'s pseudo-anomalies: a patch of fractal simplex noise added to the image.

RD++ (Tien et al., CVPR 2023) trains its projection layer on each normal image
and a noisy copy whose small rectangle carries 0.2 x fractal noise. The noise
is 3-D, sampled at (channel, row, column), so the three colour channels are
neighbouring, strongly correlated slices of one field, as in the authors'
implementation. Like NSA (dataset/nsa.py) and DRD's patches (dataset/pseudo.py)
everything here is a pure function of its arguments and a numpy Generator.
"""

import numpy as np

# Skew and unskew factors of the 3-D simplex grid: (sqrt(4) - 1) / 3 and (1 - 1/sqrt(4)) / 3
# (Perlin's simplex noise, as written out by Gustavson, "Simplex noise demystified", 2005).
SKEW = 1.0 / 3.0
UNSKEW = 1.0 / 6.0
# The 12 gradients: the midpoints of the edges of a cube (Gustavson 2005).
GRADIENTS = np.array([[1, 1, 0], [-1, 1, 0], [1, -1, 0], [-1, -1, 0],
                      [1, 0, 1], [-1, 0, 1], [1, 0, -1], [-1, 0, -1],
                      [0, 1, 1], [0, -1, 1], [0, 1, -1], [0, -1, -1]], dtype=np.float64)
# Squared radius of each corner's kernel (0.5 - r^2)^4: 0.5 keeps the noise continuous,
# a corner's kernel then ending inside the simplices that share it.
KERNEL_RADIUS2 = 0.5
# Scale giving one octave the standard deviation of the authors' OpenSimplex noise, 0.314
# (measured on random points: 30,000 of theirs, 10^6 of these); this noise then stays
# within +-0.80, theirs within about +-0.91.
NORMALISATION = 61.4

# simplex_noise at LATTICE_SCALE x p correlates with itself over distance as the authors'
# OpenSimplex noise at p, whose grid is coarser (measured correlation at shifts 0.1, 0.25,
# 0.5, 0.75 along an axis: 0.976, 0.855, 0.505, 0.176 here; 0.975, 0.852, 0.513, 0.184 theirs).
LATTICE_SCALE = 0.5
# The fractal noise of the authors' dataset: rand_3d_octaves((3, h, w), 6, 0.6) with its
# default initial wavelength of 32 pixels, halved at each octave (authors' implementation).
OCTAVES = 6
PERSISTENCE = 0.6
WAVELENGTH = 32.0
# The noise is added as NOISE_SCALE x noise to the image on the [0, 1] scale, neither
# clipped nor quantised, to every training image (authors' implementation).
NOISE_SCALE = 0.2
# Patch height and width, each drawn independently and uniformly from these integers, and
# the image side they are given for (authors' implementation, 256 x 256 images).
SIDE_RANGE = (10, 31)
REFERENCE_SIDE = 256


def simplex_noise(points: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """3-D simplex noise at `points` (..., 3), float64, in about [-1, 1]; zero at every grid vertex.

    permutation: (256,) a permutation of range(256), the hash that picks each vertex's gradient.
    Each point sums the kernels of the four corners of the simplex it falls in.
    """
    points = np.asarray(points, dtype=np.float64)
    flat = points.reshape(-1, 3)                                                 # (N, 3)
    cell = np.floor(flat + flat.sum(axis=1, keepdims=True) * SKEW)               # (N, 3) skewed corner 0
    offset0 = flat - (cell - cell.sum(axis=1, keepdims=True) * UNSKEW)           # (N, 3) from corner 0
    # Walk from corner 0 to corner 3 = (1, 1, 1) one axis at a time, largest offset first.
    order = np.argsort(-offset0, axis=1, kind="stable")                         # (N, 3)
    steps = np.zeros((len(flat), 4, 3))                                          # (N, corner, axis)
    rows = np.arange(len(flat))
    for corner in range(1, 4):
        steps[:, corner] = steps[:, corner - 1]
        steps[rows, corner, order[:, corner - 1]] = 1.0
    offsets = offset0[:, None, :] - steps + np.arange(4)[None, :, None] * UNSKEW  # (N, 4, 3)

    vertex = (cell[:, None, :].astype(np.int64) + steps.astype(np.int64)) & 255   # (N, 4, 3)
    table = np.concatenate([permutation, permutation]).astype(np.int64)          # (512,): no wrap needed
    gradient = table[vertex[..., 0] + table[vertex[..., 1] + table[vertex[..., 2]]]] % len(GRADIENTS)
    falloff = np.maximum(KERNEL_RADIUS2 - (offsets ** 2).sum(axis=2), 0.0)       # (N, 4)
    value = (falloff ** 4 * (GRADIENTS[gradient] * offsets).sum(axis=2)).sum(axis=1)
    return NORMALISATION * value.reshape(points.shape[:-1])


def fractal_noise(shape: tuple[int, int, int], rng: np.random.Generator, octaves: int = OCTAVES,
                  persistence: float = PERSISTENCE, wavelength: float = WAVELENGTH) -> np.ndarray:
    """Fractal simplex noise of `shape` (C, H, W), float64, sampled at the integer points (c, y, x).

    Octave k (from 0) samples one noise field at (c, y, x) / (wavelength / 2^k) with amplitude
    persistence^k, so the channels are slices of the field one pixel apart (coordinates
    times LATTICE_SCALE, for the authors' feature size). The field is new for every call:
    its hash is a permutation drawn from rng.
    """
    permutation = rng.permutation(256)
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij"),
                    axis=-1)                                                     # (C, H, W, 3)
    noise = np.zeros(shape)
    for octave in range(octaves):
        noise += persistence ** octave * simplex_noise(grid * (LATTICE_SCALE * 2 ** octave / wavelength), permutation)
    return noise


def rdpp_noisy_image(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RD++'s noisy image x_a of one normal image: image / 255 plus 0.2 x fractal noise in a rectangle.

    The rectangle's height and width are drawn independently from 10-31 pixels (for a 256-pixel
    image; scaled by min(H, W) / 256, at least 1), its top-left corner so that one pixel of
    the image stays free on every side (authors' implementation: randint(1, 256 - h)).
    The noise's wavelength scales with the image likewise, so a 256-pixel image gets the
    authors' noise. As in RD++ the sum is neither clipped nor rounded.
    image: (H, W, 3) uint8, left unmodified.
    Returns (noisy (H, W, 3) float32 on the scale of image / 255, mask (H, W) bool of the rectangle).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    scale = min(height, width) / REFERENCE_SIDE
    low, high = SIDE_RANGE
    patch_height, patch_width = (max(1, round(int(rng.integers(low, high + 1)) * scale)) for _ in range(2))
    if min(height - patch_height, width - patch_width) < 2:
        raise ValueError(f"the image ({height} x {width}) is too small for a {patch_height} x {patch_width} "
                         "patch with a free border")
    top = int(rng.integers(1, height - patch_height))                            # in [1, H - h - 1]
    left = int(rng.integers(1, width - patch_width))

    noise = fractal_noise((3, patch_height, patch_width), rng, wavelength=WAVELENGTH * scale)  # (3, h, w)
    noisy = image.astype(np.float32) / 255.0                                     # (H, W, 3) in [0, 1]
    noisy[top:top + patch_height, left:left + patch_width] += NOISE_SCALE * noise.transpose(1, 2, 0)
    mask = np.zeros((height, width), dtype=bool)
    mask[top:top + patch_height, left:left + patch_width] = True
    return noisy, mask
