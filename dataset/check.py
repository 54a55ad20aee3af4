"""Check every file of every category before any training starts.

Decoding problems would otherwise surface one category at a time, when that
category's images are loaded, possibly hours into a run. Here every image and
mask is fully decoded once, on a thread pool (PIL releases the GIL while it
decodes), and all problems are reported in one InputError.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dataset.folders import CategoryFiles
from dataset.images import mask_problem, read_mask, read_rgb
from utils.errors import InputError
from utils.progress import progress


def check_files(files: dict[str, CategoryFiles], workers: int | None = None) -> None:
    """Raise one InputError listing every unusable file of `files` (category -> its files).

    An image is unusable when it cannot be fully decoded; a mask also when it is
    not binary (unless it numbers its regions, as VisA's do), is empty (all 0, yet
    its image is in a defect folder) or differs in size from its image (it would be
    stretched). workers: threads (None: Python's default).
    """
    images, masks, numbered = [], [], []
    for category in files.values():
        # Images without masks: training, validation and private test images.
        unmasked = category.train + category.validation + [image for split in category.private.values()
                                                             for image in split]
        images += unmasked + [sample.image for sample in category.test]
        masks += [None] * len(unmasked) + [sample.mask for sample in category.test]
        numbered += [False] * len(unmasked) + [sample.numbered_mask for sample in category.test]
    with ThreadPoolExecutor(workers) as pool:
        found = list(progress(pool.map(_problems, images, masks, numbered), total=len(images),
                              desc="checking files", leave=False))
    problems = [problem for file_problems in found for problem in file_problems]
    if problems:
        summary = f"{len(problems)} problems in the dataset files; fix or replace each file named:"
        raise InputError.listed(summary, problems)


def _problems(image: Path, mask: Path | None, numbered: bool) -> list[str]:
    """The problems of one image and of its mask, if it has one, as sentences naming the file;
    numbered: the mask numbers its regions (TestSample.numbered_mask)."""
    problems, size = [], None
    try:
        size = read_rgb(image).size  # (W, H)
    except InputError as error:
        problems.append(str(error))
    if mask is None:
        return problems
    try:
        values = read_mask(mask)  # (H, W)
    except InputError as error:
        return problems + [str(error)]
    problem = None if numbered else mask_problem(mask, values)
    if problem:
        problems.append(problem)
    elif not values.any():
        problems.append(f"Mask {mask} is empty (all 0) although {image} is a defect image; mark the"
                        " defect in the mask or move the image to the normal test folder.")
    height, width = values.shape
    if size is not None and size != (width, height):
        problems.append(f"Mask {mask} is {width}x{height} pixels but its image {image} is"
                        f" {size[0]}x{size[1]}; save the mask at the size of its image.")
    return problems
