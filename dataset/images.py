"""Torch datasets: training pairs (clean, NSA-augmented) and test images with masks.

Both datasets decode and resize every image once, at construction, into a uint8
array held in memory, so epochs never re-decode files and an unreadable file
stops the run before any training starts.
"""

import random
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from dataset import nsa, pseudo, simplex
from dataset.folders import TestSample, broken_link
from utils.errors import InputError
from utils.progress import progress

# ImageNet statistics the teacher was trained with (paper Sec. 4.1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


# PIL refuses images over 2 * Image.MAX_IMAGE_PIXELS (about 179 megapixels), and warns over half that,
# as possible decompression bombs: files made to claim a size their few bytes expand to, to exhaust a
# server's memory. A dataset is the user's own files, and line-scan cameras take larger images, so our
# reads lift PIL's limit and refuse only images over this bound: 32768 x 32768, 3 GiB decoded as RGB.
MAX_PIXELS = 2**30

# The modes PIL gives grayscale of more than 8 bits: 16-bit files (PNG, TIFF) and
# "I", 32-bit signed integers. Converting them to "L" or "RGB" would clip, not scale.
DEEP_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_image(path: Path, image_size: int) -> np.ndarray:
    """Decode an image as RGB, resized with antialiasing (the authors' Image.ANTIALIAS,
    i.e. LANCZOS). Returns (S, S, 3) uint8."""
    return np.asarray(read_rgb(path).resize((image_size, image_size), Image.LANCZOS))


def load_mask(path: Path, image_size: int, numbered: bool = False) -> np.ndarray:
    """Decode a binary ground-truth mask (0 normal, any one other value anomalous, so
    0/1 and 0/255 alike) and resize it with nearest neighbour. Returns (S, S) bool;
    an InputError for a mask that is not binary. numbered: the mask numbers its defect
    regions (VisA), so every non-zero value is anomalous and any number of values is fine."""
    values = read_mask(path)
    problem = None if numbered else mask_problem(path, values)
    if problem:
        raise InputError(problem)
    anomalous = Image.fromarray((values != 0).astype(np.uint8) * 255)
    return np.asarray(anomalous.resize((image_size, image_size), Image.NEAREST)) > 0


def read_rgb(path: Path) -> Image.Image:
    """Decode a whole image (so that a truncated file fails here, with its name) as
    8-bit RGB, at its own size; 16-bit grayscale is scaled down, not clipped."""
    image = _open(path)
    if image.mode in DEEP_GRAY_MODES:
        values = np.asarray(image)  # (H, W) uint16 or int32
        # 65535 / 257 = 255; "I" data that does not fit 16 bits is scaled by the int32 maximum.
        scale = 257 if values.max() <= 65535 else (2**31 - 1) / 255
        image = Image.fromarray(np.round(np.clip(values, 0, None) / scale).astype(np.uint8))
    return image.convert("RGB")


def read_mask(path: Path) -> np.ndarray:
    """Decode a whole mask at its own size. Returns (H, W) values: 16-bit and 32-bit
    grayscale as stored, any other mode as 8-bit gray."""
    image = _open(path)
    if image.mode in DEEP_GRAY_MODES:
        return np.asarray(image)
    return np.asarray(image.convert("L"))


def mask_problem(path: Path, values: np.ndarray) -> str | None:
    """The sentence saying why the mask `values` (H, W) read from `path` is not binary,
    i.e. holds more than 0 and one other value; None when it is binary (or all 0)."""
    foreground = values[values != 0]
    if (foreground == foreground[:1]).all():  # true for an empty foreground too
        return None
    levels = np.unique(values)
    shown = ", ".join(str(level) for level in levels[:5]) + (", ..." if len(levels) > 5 else "")
    return (f"Mask {path} is not binary ({len(levels)} values: {shown}); save it with 0 for normal"
            " pixels and one value (1 or 255) for anomalous ones.")


def _open(path: Path) -> Image.Image:
    """Open and fully decode one file; an InputError naming it when that fails or when the image
    has more than MAX_PIXELS pixels (checked on its header, before decoding)."""
    try:
        with _pil_limit_lifted, Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise InputError(f"Image {path} is {image.width}x{image.height} pixels, more than the"
                                 f" {MAX_PIXELS:,} (dataset.images.MAX_PIXELS) this program decodes; save it"
                                 " smaller or cut it into tiles.")
            image.load()
    except (OSError, SyntaxError, ValueError) as error:
        unreadable = f"Cannot read image {path} ({error}); replace or remove the file."
        raise InputError(broken_link(path) or unreadable) from None
    return image


class _PILLimitLifted:
    """A context manager: PIL's pixel limit (Image.MAX_IMAGE_PIXELS) is off while any thread is inside,
    and set back to what it was when the last one leaves. check_files reads on a thread pool: each
    thread restoring the limit on its own would switch it back on under another's feet."""

    def __init__(self):
        self._lock = threading.Lock()
        self._inside = 0
        self._limit = None

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                self._limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            self._inside += 1

    def __exit__(self, *exception) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                Image.MAX_IMAGE_PIXELS = self._limit


_pil_limit_lifted = _PILLimitLifted()


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8, or float on the [0, 1] scale (DRD's pseudo-anomalies reach 1.2),
    -> (3, H, W) float32 normalised with the ImageNet mean and std."""
    scaled = image.transpose(2, 0, 1).astype(np.float32)
    if image.dtype == np.uint8:
        scaled /= 255.0
    return (torch.from_numpy(scaled) - _MEAN) / _STD


class EpochSampler(Sampler[int]):
    """Shuffles like a DataLoader with shuffle=True, but yields keys that carry the epoch.

    Each pass (each iter() call, i.e. each epoch of a DataLoader) yields
    `epoch * n_items + i` for a permutation i of range(n_items) drawn from
    `seed + epoch`, then advances its epoch. TrainImages decodes a key with
    divmod(key, n_items). Why: the augmentation of an item must depend only on
    (seed, epoch, index), not on the number of workers nor on whether the run
    was resumed, and DataLoader workers (persistent ones especially) never see
    attribute changes made in the main process, such as a dataset.set_epoch();
    the sampler runs in the main process and its keys reach every worker.
    """

    def __init__(self, n_items: int, seed: int, start_epoch: int = 0):
        self.n_items = n_items
        self.seed = seed
        self.epoch = start_epoch

    def __len__(self) -> int:
        return self.n_items

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        order = torch.randperm(self.n_items, generator=torch.Generator().manual_seed(self.seed + epoch))
        return iter((epoch * self.n_items + order).tolist())


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed NumPy's and Python's global generators per worker.

    Belt and braces: the datasets draw only from their own per-item generators.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


class TrainImages(Dataset):
    """Normal training images as (clean, augmented) pairs, each (3, S, S) float32 normalised.

    The clean image is the teacher's target; the augmented one is image-level
    masking (ILM, see image_level_mask), applied to the resized uint8 image (NSA
    runs at the training resolution, as the authors do). With augment=False (ILM
    off) an item is (clean,) and no synthesis work is done.
    Index it with EpochSampler keys: item key `epoch * len(self) + index` uses
    the generator np.random.default_rng([seed, epoch, index]).
    """

    def __init__(
        self,
        files: list[Path],
        category: str,
        image_size: int,
        alpha: float = 1.0,
        nsa_mode: str = "swap",
        seed: int = 0,
        augment: bool = True,
        synthesis: str = "nsa",
    ):
        self.files = list(files)
        self.category = category
        self.alpha = alpha
        self.nsa_mode = nsa_mode
        self.seed = seed
        self.augment = augment
        self.synthesis = synthesis
        self.images = _preload(self.files, image_size, f"loading {category} train")  # (N, S, S, 3)
        if augment and alpha > 0 and synthesis == "nsa" and not nsa.has_constants(category):
            print(f"note: no NSA constants for category '{category}'; using the texture defaults.")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(key, len(self.images))
        image = self.images[index]
        clean = to_tensor(image)
        if not self.augment:
            return (clean,)
        rng = np.random.default_rng([self.seed, epoch, index])
        augmented = image_level_mask(image, self.category, rng, self.alpha, self.synthesis, self.nsa_mode)
        return clean, to_tensor(augmented)


# Where ILM's anomalies come from: NSA (Sec. 3.2), DRD's pasted patches or RD++'s simplex noise.
SYNTHESES = ("nsa", "drd", "rdpp")


def image_level_mask(image: np.ndarray, category: str, rng: np.random.Generator, alpha: float,
                     synthesis: str = "nsa", nsa_mode: str = "swap") -> np.ndarray:
    """ILM's input x_a, (H, W, 3): with probability alpha (Table 6) a synthetic anomaly, else the image.

    synthesis "nsa": NSA as the authors configure it (Sec. 3.2), uint8; "drd": DRD's pasted
    patches, float32 on the [0, 1] scale and unclipped (up to 1.2), as DRD computes them;
    "rdpp": RD++'s simplex-noise patch added, float32 on the [0, 1] scale, unclipped.
    """
    if rng.random() >= alpha:
        return image
    if synthesis == "drd":
        return pseudo.drd_pseudo_anomaly(image, rng)[0]
    if synthesis == "rdpp":
        return simplex.rdpp_noisy_image(image, rng)[0]
    return nsa.synthesize(image, category, rng, nsa_mode)[0]


class TestImages(Dataset):
    """Test images with their masks and labels; test data never goes through NSA.

    Attributes: samples (list of TestSample), images (N, S, S, 3) uint8,
    masks (N, S, S) bool (all False for normal images), labels (N,) int64.
    An item is (image (3, S, S) float32 normalised, mask (1, S, S) float32 in {0, 1},
    label int).
    """

    __test__ = False  # a dataset, not a pytest test class

    def __init__(self, samples: list[TestSample], image_size: int):
        self.samples = list(samples)
        self.images = _preload([sample.image for sample in self.samples], image_size, "loading test")
        masks = np.zeros((len(self.samples), image_size, image_size), dtype=bool)
        for i, sample in enumerate(self.samples):
            if sample.mask is not None:
                masks[i] = load_mask(sample.mask, image_size, sample.numbered_mask)
        masks.flags.writeable = False
        self.masks = masks
        # Labels come from the folders: the authors derive them from the masks,
        # which agrees on every dataset here, but a defect too small to survive a
        # nearest-neighbour resize would otherwise count as normal.
        self.labels = np.array([sample.label for sample in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        mask = torch.from_numpy(self.masks[index].astype(np.float32)).unsqueeze(0)  # (1, S, S)
        return to_tensor(self.images[index]), mask, int(self.labels[index])


class ImageFiles(Dataset):
    """Images to score with a trained model, decoded when an item is asked for (in the
    DataLoader's workers), so that a folder of any size streams through in batches.

    An item is (index, image (3, S, S) float32 normalised, pixels (S, S, 3) uint8, problem):
    problem is "" for a readable file; for an unreadable one it is the sentence saying why,
    with zeros in place of the image, so that one broken file never stops the others.
    """

    def __init__(self, files: list[Path], image_size: int):
        self.files = list(files)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, np.ndarray, str]:
        try:
            pixels = load_image(self.files[index], self.image_size).copy()  # writable, as collation wants
        except InputError as error:
            pixels = np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
            return index, to_tensor(pixels), pixels, str(error)
        return index, to_tensor(pixels), pixels, ""


def _preload(paths: list[Path], image_size: int, description: str) -> np.ndarray:
    """Decode and resize every image once. Returns (N, S, S, 3) uint8, read-only so
    that no augmentation can alter the cache in place."""
    images = np.zeros((len(paths), image_size, image_size, 3), dtype=np.uint8)
    for i, path in enumerate(progress(paths, desc=description, leave=False)):
        images[i] = load_image(path, image_size)
    images.flags.writeable = False
    return images
