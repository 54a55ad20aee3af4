"""A small synthetic dataset in the MVTec layout, for a quick end-to-end run.

Two categories: a woven texture and a hexagonal nut on a plain background.
Normal images vary only a little (phase, colour, pose). The defects are of
kinds NSA does not produce, since its patches are copies of the same image:
scratches, spots of a foreign colour, missing parts and tinted regions. They
are large (8-25% of the side) and of high contrast, so that a working pipeline
finds them far above chance even with an untrained teacher at 64 px.
Everything is drawn from the seed, so two generations are byte-identical.

`make_demo_visa` writes the same images in VisA's released layout (JPG images, PNG
masks numbering each defect region, split_csv/1cls.csv), to test that loader too.
`make_demo_mvtec_ad_2` writes a handful of such images, cropped to a non-square frame, in
MVTec AD 2's released layout, private test sets included.
"""

import csv
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

DEMO_VERSION = "mrkd-demo-1"  # bump when the drawing changes, to regenerate old folders
MARKER = ".demo_version"
DEMO_CATEGORIES = ("demo_texture", "demo_object")
DEFECTS = ("scratch", "spot", "missing", "color")
SIZE = 128  # side of every image, in pixels
N_TRAIN = 40
N_TEST_GOOD = 10
N_PER_DEFECT = 4  # 16 defective test images per category

# MVTec AD 2's demo: a handful of images per split, so that a run trains, evaluates and writes a
# submission in seconds. Its images keep rows 16-111 of the drawing, 128x96 pixels: MVTec AD 2's
# images are not square (e.g. can 2232x1024), and maps written back at an image's own size are
# then tested at a size other than the square the network sees. Every defect keeps pixels in
# that band, since _point_in draws its centre at least 16 px from the border.
AD2_ROWS = slice(16, 112)
# Images per folder; test_public/bad holds one image per defect kind.
AD2_COUNTS = {"train/good": 10, "validation/good": 4, "test_public/good": 4, "test_public/bad": len(DEFECTS),
              "test_private": 4, "test_private_mixed": 4}

OBJECT_BACKGROUND = (32, 32, 36)  # the plain background around the nut
HOLE_COLOUR = (20, 20, 24)  # what a hole in the fabric shows


@dataclass
class DemoSample:
    """One drawn image: clean (H, W, 3) uint8, image (H, W, 3) uint8 with the defect
    (equal to clean for a normal sample) and mask (H, W) bool, the changed pixels."""

    clean: np.ndarray
    image: np.ndarray
    mask: np.ndarray


def make_demo_dataset(root: Path, seed: int = 0) -> tuple[str, ...]:
    """Write the demo dataset under `root` (MVTec layout) unless it is already there.

    Returns the category names. A marker file records the version and seed, so a
    second call with the same seed rewrites nothing.
    """
    root = Path(root)
    stamp = f"{DEMO_VERSION} seed={seed}\n"
    if _is_written(root, stamp):
        return DEMO_CATEGORIES
    for category in DEMO_CATEGORIES:
        shutil.rmtree(root / category, ignore_errors=True)
    for category, split, defect, i, sample in _samples(seed):
        folder = root / category
        _save(sample.image, folder / split / (defect or "good") / f"{i:03d}.png")
        if defect is not None:
            _save(sample.mask.astype(np.uint8) * 255, folder / "ground_truth" / defect / f"{i:03d}_mask.png")
    (root / MARKER).write_text(stamp)  # last, so that an interrupted generation is redone
    return DEMO_CATEGORIES


def make_demo_visa(root: Path, seed: int = 0) -> tuple[str, ...]:
    """Write the demo dataset under `root` in VisA's released layout unless it is already there.

    The images of make_demo_dataset, as VisA ships its own: <category>/Data/Images/Normal/
    and Anomaly/ hold NNNN.JPG files (training and test images alike), <category>/Data/Masks/
    Anomaly/NNNN.png the masks, each defect region numbered 1, 2, ... (8-connected), and
    split_csv/1cls.csv lists every image with its split, label and mask, paths relative to
    `root`. Returns the category names; a second call with the same seed rewrites nothing.
    """
    root = Path(root)
    stamp = f"{DEMO_VERSION} visa seed={seed}\n"
    if _is_written(root, stamp) and (root / "split_csv" / "1cls.csv").is_file():
        return DEMO_CATEGORIES
    for category in DEMO_CATEGORIES:
        shutil.rmtree(root / category, ignore_errors=True)
    rows = [("object", "split", "label", "image", "mask")]
    numbers = {}  # (category, Normal or Anomaly) -> images written so far
    for category, split, defect, _, sample in _samples(seed):
        kind = "Normal" if defect is None else "Anomaly"
        number = numbers[category, kind] = numbers.get((category, kind), -1) + 1
        image = f"{category}/Data/Images/{kind}/{number:04d}.JPG"
        _save(sample.image, root / image, format="JPEG", quality=95)
        mask = ""
        if defect is not None:
            mask = f"{category}/Data/Masks/Anomaly/{number:04d}.png"
            regions, _ = ndimage.label(sample.mask, structure=np.ones((3, 3)))
            _save(regions.astype(np.uint8), root / mask)
        rows.append((category, split, "normal" if defect is None else "anomaly", image, mask))
    table = io.StringIO(newline="")
    csv.writer(table, lineterminator="\n").writerows(rows)
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text(table.getvalue())
    (root / MARKER).write_text(stamp)  # last, so that an interrupted generation is redone
    return DEMO_CATEGORIES


def make_demo_mvtec_ad_2(root: Path, seed: int = 0) -> tuple[str, ...]:
    """Write the demo dataset under `root` in MVTec AD 2's released layout unless it is already there.

    Per category, AD2_COUNTS images in each of <category>/train/good/, validation/good/,
    test_public/good/ and test_public/bad/ (one image per defect kind) with the masks
    test_public/ground_truth/bad/NNN_regular_mask.png (0 and 255), and the private sets
    test_private/NNN_regular.png and test_private_mixed/NNN_mixed.png, every other image of them
    defective, without masks, as released. Images are 128x96 (AD2_ROWS of the drawing), named as
    MVTec AD 2 names its own. Returns the category names; a second call with the same seed
    rewrites nothing.
    """
    root = Path(root)
    stamp = f"{DEMO_VERSION} mvtec_ad_2 seed={seed}\n"
    if _is_written(root, stamp):
        return DEMO_CATEGORIES
    for category in DEMO_CATEGORIES:
        shutil.rmtree(root / category, ignore_errors=True)
    for index, category in enumerate(DEMO_CATEGORIES):
        for number, (split, count) in enumerate(AD2_COUNTS.items()):
            for i in range(count):
                if split == "test_public/bad":
                    defect = DEFECTS[i]
                elif split.startswith("test_private") and i % 2 == 1:
                    defect = DEFECTS[i // 2 % len(DEFECTS)]
                else:
                    defect = None
                # Each split draws from its own seeds: (seed, category, 10 + split number, image).
                sample = make_sample(category, defect, np.random.default_rng([seed, index, 10 + number, i]))
                name = f"{i:03d}_{'mixed' if split == 'test_private_mixed' else 'regular'}"
                _save(sample.image[AD2_ROWS], root / category / split / f"{name}.png")
                if split == "test_public/bad":
                    _save(sample.mask[AD2_ROWS].astype(np.uint8) * 255,
                          root / category / "test_public" / "ground_truth" / "bad" / f"{name}_mask.png")
    (root / MARKER).write_text(stamp)  # last, so that an interrupted generation is redone
    return DEMO_CATEGORIES


def _is_written(root: Path, stamp: str) -> bool:
    """Whether `root` holds a finished generation stamped `stamp` (version, layout and seed)."""
    marker = root / MARKER
    return marker.is_file() and marker.read_text() == stamp and all((root / c).is_dir() for c in DEMO_CATEGORIES)


def _samples(seed: int) -> Iterator[tuple[str, str, str | None, int, DemoSample]]:
    """Every demo image, category by category: (category, split, defect or None for a normal
    image, index within its folder, sample). Each is drawn from its own seed, so both layouts
    hold the same images."""
    for index, category in enumerate(DEMO_CATEGORIES):
        for i in range(N_TRAIN):
            yield category, "train", None, i, make_sample(category, None, np.random.default_rng([seed, index, 0, i]))
        for i in range(N_TEST_GOOD):
            yield category, "test", None, i, make_sample(category, None, np.random.default_rng([seed, index, 1, i]))
        for kind, defect in enumerate(DEFECTS):
            for i in range(N_PER_DEFECT):
                rng = np.random.default_rng([seed, index, 2 + kind, i])
                yield category, "test", defect, i, make_sample(category, defect, rng)


def make_sample(category: str, defect: str | None, rng: np.random.Generator) -> DemoSample:
    """Draw one normal image of `category` and, unless defect is None, damage it."""
    if category == "demo_texture":
        clean, region = _texture(rng), np.ones((SIZE, SIZE), dtype=bool)
    else:
        clean, region = _nut(rng)
    if defect is None:
        return DemoSample(clean, clean, np.zeros((SIZE, SIZE), dtype=bool))
    # Defects are drawn on the object only (the whole image for the texture).
    image = DEFECT_DRAWERS[defect](clean, region, rng)
    return DemoSample(clean, image, np.any(image != clean, axis=-1))


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A plain weave: square cells where a vertical and a horizontal thread cross
    alternately on top, with jittered offset, period and colour and a faint
    grain. Returns (H, W, 3) uint8."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    period = 8.0 * rng.uniform(0.97, 1.03)
    x, y = (x + rng.uniform(0, period)) / period, (y + rng.uniform(0, period)) / period
    vertical_on_top = (np.floor(x) + np.floor(y)) % 2 == 0
    # Each thread is rounded: brightest along its middle, darker at its edges.
    bump = np.where(vertical_on_top, np.sin(np.pi * (x % 1)), np.sin(np.pi * (y % 1)))
    shade = 60.0 * (bump - 0.6) + rng.normal(0.0, 2.0, size=(SIZE, SIZE))
    colour = np.array([150.0, 125.0, 95.0]) + rng.uniform(-4, 4, size=3)
    return _to_uint8(colour + shade[..., None])


def _nut(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A brass hexagonal nut with a round hole, lit from the top left, with a small
    jitter of position, size, rotation and colour. Returns the image (H, W, 3) uint8
    and the object mask (H, W) bool."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    centre_y, centre_x = SIZE / 2 + rng.uniform(-3, 3, size=2)
    radius = 40.0 + rng.uniform(-2, 2)
    angle = rng.uniform(-np.pi / 18, np.pi / 18)
    dy, dx = y - centre_y, x - centre_x
    # Inside a regular hexagon: the projection on each of its 6 edge normals is
    # at most the apothem.
    normals = angle + np.pi / 6 + np.arange(6) * np.pi / 3
    projections = dx[..., None] * np.cos(normals) + dy[..., None] * np.sin(normals)
    hexagon = np.all(projections <= radius * np.cos(np.pi / 6), axis=-1)
    nut = hexagon & (dx**2 + dy**2 > (0.4 * radius) ** 2)
    light = 1.0 + 0.25 * (-(dx + dy) / (2 * radius))
    colour = np.array([185.0, 155.0, 80.0]) + rng.uniform(-4, 4, size=3)
    image = np.where(nut[..., None], colour * light[..., None], np.array(OBJECT_BACKGROUND))
    return _to_uint8(image), nut


def _scratch(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A straight line 4-6 px wide and 40-70 px long, near white or near black."""
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(40, 70)
    direction = np.array([np.sin(angle), np.cos(angle)])
    start = _point_in(region, rng) - 0.5 * length * direction
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    # Distance of each pixel to the segment of `length` from start along direction.
    along = np.clip((y - start[0]) * direction[0] + (x - start[1]) * direction[1], 0, length)
    distance = np.hypot(y - start[0] - along * direction[0], x - start[1] - along * direction[1])
    line = (distance <= rng.uniform(2.0, 3.0)) & region
    shade = rng.choice([10, 245])
    return _paint(image, line, np.array([shade, shade, shade]))


def _spot(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An irregular blob, 16-28 px across, of a saturated foreign colour."""
    blob = _blob(_point_in(region, rng), rng.uniform(8, 14), rng) & region
    colours = np.array([[40, 170, 60], [40, 80, 200], [200, 40, 160]])
    return _paint(image, blob, colours[rng.integers(len(colours))])


def _missing(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A piece cut out: on the nut a bite from its rim shows the background; in the
    fabric a hole shows what lies beneath."""
    if region.all():
        hole = _blob(_point_in(region, rng), rng.uniform(8, 14), rng)
        return _paint(image, hole, np.array(HOLE_COLOUR))
    ys, xs = np.nonzero(region)
    centre = np.array([ys.mean(), xs.mean()])
    angle = rng.uniform(0, 2 * np.pi)
    # Centre the bite on the rim, 36 px out from the middle of the nut.
    rim = centre + 36.0 * np.array([np.sin(angle), np.cos(angle)])
    bite = _blob(rim, rng.uniform(15, 22), rng) & region
    return _paint(image, bite, np.array(OBJECT_BACKGROUND))


def _color(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A region 20-36 px across tinted towards a foreign colour, keeping the shading."""
    area = _blob(_point_in(region, rng), rng.uniform(10, 18), rng) & region
    tints = np.array([[60.0, 110.0, 230.0], [220.0, 50.0, 60.0]])
    tinted = 0.35 * image.astype(np.float32) + 0.65 * tints[rng.integers(len(tints))]
    result = image.copy()
    result[area] = _to_uint8(tinted)[area]
    return result


DEFECT_DRAWERS = {"scratch": _scratch, "spot": _spot, "missing": _missing, "color": _color}


def _blob(centre: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular disk: its radius varies smoothly with the angle by up to 30%."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    theta = np.arctan2(y - centre[0], x - centre[1])
    wobble = sum(
        amplitude * np.cos(k * theta + phase)
        for k, amplitude, phase in zip((2, 3, 5), rng.uniform(0, 0.1, 3), rng.uniform(0, 2 * np.pi, 3))
    )
    return np.hypot(y - centre[0], x - centre[1]) <= radius * (1.0 + wobble)


def _point_in(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random pixel of `region`, at least 16 px from the border, as (y, x)."""
    inner = np.zeros_like(region)
    inner[16:-16, 16:-16] = region[16:-16, 16:-16]
    ys, xs = np.nonzero(inner)
    pick = rng.integers(len(ys))
    return np.array([ys[pick], xs[pick]], dtype=np.float32)


def _paint(image: np.ndarray, where: np.ndarray, colour: np.ndarray) -> np.ndarray:
    result = image.copy()
    result[where] = colour
    return result


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def _save(array: np.ndarray, path: Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


# --demo's data in each dataset's layout, written where DATA_DIR points (main.py).
DEMO_DATASETS = {"mvtec": make_demo_dataset, "visa": make_demo_visa, "mvtec_ad_2": make_demo_mvtec_ad_2}
