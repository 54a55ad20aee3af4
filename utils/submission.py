"""MVTec AD 2's private test sets written as its evaluation server takes them (benchmark.mvtec.com).

The layout and formats are those that MVTec's own checker, check_and_prepare_data_for_upload.py
of the dataset's public code, accepts before packing a folder for upload:

    <folder>/anomaly_images/<category>/<split>/<image stem>.tiff             one channel, float16
    <folder>/anomaly_images_thresholded/<category>/<split>/<image stem>.png  one channel, 0 or 255

split is test_private (images NNN_regular.png) or test_private_mixed (NNN_mixed.png), and each
file keeps its image's name with the suffix changed. The float maps give the server's
threshold-free metrics (AU-PRO up to an FPR of 0.05), the binary maps its threshold-dependent
ones (SegF1). The server takes all 8 categories, both splits, and nothing else in the folder.
Maps are written at their image's own size, resized back from the network's square input, so
that they lie over the server's full-resolution ground truth.
"""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from dataset.folders import MVTEC_AD_2_CATEGORIES, MVTEC_AD_2_PRIVATE
from utils.errors import InputError

MAPS = "anomaly_images"                   # float maps, <image stem>.tiff
BINARY_MAPS = "anomaly_images_thresholded"  # binarized maps, <image stem>.png
# Deflate-compressed TIFF: a 2448x2048 float16 map takes 10 MB raw, 1.6 MB compressed (about
# 6 GB against 1 GB per category); tifffile.imread, which MVTec's checker reads them with, decodes it.
TIFF_COMPRESSION = "zlib"


def write_category(folder: str | Path, category: str, images: dict[str, list[Path]], maps: dict[str, np.ndarray],
                   threshold: float, workers: int | None = None, replace: bool = False) -> list[Path]:
    """Write one category's maps into the submission `folder`; returns the files written.

    images: split -> its image paths (CategoryFiles.private); maps: split -> (N, S, S) anomaly
    maps of those images, in the same order; threshold: a pixel whose map value is >= threshold
    is 255 in the binary map, else 0. Each map is resized to its image's size (bilinear) in
    float32, then stored as float16 and binarized from the float32 values. workers: threads.

    Refused with an InputError, before anything is written, when the category already has a
    folder under `folder`: a submission is written once, never merged into an older one. With
    replace=True (a run rewriting its own submission) the category's folders are removed instead,
    once the maps are checked.
    """
    folder = Path(folder)
    for base in (MAPS, BINARY_MAPS):
        if (folder / base / category).exists() and not replace:
            raise InputError(f"Submission folder {folder / base / category} already exists; remove it or write"
                             " the submission into another folder.")
    if images.keys() != maps.keys():
        raise ValueError(f"images and maps must name the same splits; got {sorted(images)} and {sorted(maps)}.")
    limit = float(np.finfo(np.float16).max)
    for split, split_maps in maps.items():
        if split_maps.ndim != 3 or len(split_maps) != len(images[split]):
            raise ValueError(f"maps of {split} must have shape ({len(images[split])}, S, S); got {split_maps.shape}.")
        # Bilinear resizing keeps every value between the map's extremes, so this bounds the written maps.
        if not np.isfinite(split_maps).all() or np.abs(split_maps).max() > limit:
            raise ValueError(f"maps of {split} must be finite and within float16's range (±{limit:g}).")
    for base in (MAPS, BINARY_MAPS):
        shutil.rmtree(folder / base / category, ignore_errors=True)
        for split in maps:
            (folder / base / category / split).mkdir(parents=True)
    jobs = [(image, split_map, folder / MAPS / category / split / f"{Path(image).stem}.tiff",
             folder / BINARY_MAPS / category / split / f"{Path(image).stem}.png")
            for split in maps for image, split_map in zip(images[split], maps[split])]
    # Deflate and PNG encoding release the GIL: threads write several images at once.
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda job: _write_image(*job, threshold), jobs))
    return [path for _, _, tiff, png in jobs for path in (tiff, png)]


def _write_image(image: Path, anomaly_map: np.ndarray, tiff: Path, png: Path, threshold: float) -> None:
    """Resize one map (h, w) to `image`'s size, write it as float16 `tiff`, binarized as `png`."""
    with Image.open(image) as opened:
        size = opened.size  # (W, H), read from the header without decoding the pixels
    full = np.asarray(Image.fromarray(anomaly_map.astype(np.float32)).resize(size, Image.BILINEAR))  # (H, W)
    tifffile.imwrite(tiff, full.astype(np.float16), compression=TIFF_COMPRESSION)
    Image.fromarray(np.where(full >= threshold, 255, 0).astype(np.uint8)).save(png)


def missing_parts(folder: str | Path) -> list[str]:
    """The <category>/<split> folders the server expects under `folder` that are not there yet,
    for every category of MVTec AD 2 and split of MVTEC_AD_2_PRIVATE; empty when complete."""
    folder = Path(folder)
    return [f"{category}/{split}" for category in MVTEC_AD_2_CATEGORIES for split in MVTEC_AD_2_PRIVATE
            if not all((folder / base / category / split).is_dir() for base in (MAPS, BINARY_MAPS))]
