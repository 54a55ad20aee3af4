"""Time NSA synthesis on one CPU thread: python -m dataset.benchmark_nsa [--size 256 --count 200].

Prints images per second for a texture category (carpet) and an object
category with background checks (bottle), in every blending mode.
"""

import os

# One thread, as a data-loader worker would use; set before numpy is imported.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from dataset.nsa import MODES, synthesize  # noqa: E402

# Poisson modes solve a sparse system per patch: time fewer images.
POISSON_COUNT_FRACTION = 0.1


def texture_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """A carpet-like texture: smoothed colour noise plus stripes, (size, size, 3) uint8."""
    noise = rng.normal(0.0, 1.0, (size, size, 3))
    # Average 4x4 blocks so the texture has structure, not only pixel noise.
    coarse = noise.reshape(size // 4, 4, size // 4, 4, 3).mean(axis=(1, 3))
    smooth = np.kron(coarse, np.ones((4, 4, 1)))
    stripes = 20.0 * np.sin(np.arange(size) / 3.0)[None, :, None]
    return np.clip(120.0 + 40.0 * smooth + stripes + 8.0 * noise, 0, 255).astype(np.uint8)


def object_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """A bottle-like view, (size, size, 3) uint8.

    The bottle constants are background value 200, threshold 60: a light grey
    background near 200 and an object whose mean lies below 140 (a dark disk
    filling most of the frame, as the bottle does in MVTec).
    """
    background = rng.normal(200.0, 6.0, (size, size, 3))
    ys, xs = np.mgrid[:size, :size]
    radius = np.hypot(ys - size / 2, xs - size / 2)
    inside = radius < 0.42 * size
    bottle = 70.0 + 25.0 * np.sin(radius / 4.0)[..., None] + rng.normal(0.0, 10.0, (size, size, 3))
    return np.clip(np.where(inside[..., None], bottle, background), 0, 255).astype(np.uint8)


def images_per_second(image: np.ndarray, category: str, mode: str, count: int) -> float:
    """Synthesize count times from one seeded rng and return the rate."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(count):
        synthesize(image, category, rng, mode)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (multiple of 4)")
    parser.add_argument("--count", type=int, default=300, help="images timed per category in swap mode")
    args = parser.parse_args()
    if args.size % 4 != 0 or args.size < 16:
        parser.error("--size must be a multiple of 4 and at least 16")

    rng = np.random.default_rng(0)
    images = {"carpet": texture_image(args.size, rng), "bottle": object_image(args.size, rng)}
    poisson_count = max(1, round(args.count * POISSON_COUNT_FRACTION))
    with threadpool_limits(limits=1):
        print(f"NSA synthesis, {args.size}x{args.size}, 1 thread (OMP/BLAS threads limited to 1)")
        print(f"{'category':<10}{'mode':<9}{'images':>7}{'images/s':>10}")
        for category, image in images.items():
            for mode in MODES:
                count = args.count if mode == "swap" else poisson_count
                rate = images_per_second(image, category, mode, count)
                print(f"{category:<10}{mode:<9}{count:>7}{rate:>10.1f}")


if __name__ == "__main__":
    main()
