"""Find the training and test files of one category of MVTec AD, BTAD, MTD, VisA or MVTec AD 2,
and the images under a path to score with a trained run.

Only paths are gathered here; `dataset/images.py` decodes them. Every problem
with the folders is reported as an InputError with one sentence a user can act
on, so that a run never starts on a silently empty or half-labelled set.

Symbolic links are followed (datasets often live behind them). A broken one is never
dropped: one named like an image is listed as that image, so that reading it reports
it with every other unreadable file, and one where a folder is expected is a problem
reported here.
"""

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from utils.errors import InputError

MVTEC_CATEGORIES = (
    "carpet", "grid", "leather", "tile", "wood",
    "bottle", "cable", "capsule", "hazelnut", "metal_nut",
    "pill", "screw", "toothbrush", "transistor", "zipper",
)
# VisA (Zou et al., ECCV 2022), its 12 objects as named in the `object` column of its split files.
VISA_CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)
# MVTec AD 2 (Heckler-Kram et al., 2025), its 8 scenarios as its release and MVTec's own loader name them.
MVTEC_AD_2_CATEGORIES = (
    "can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts",
)
# The categories each dataset is evaluated on by default; the MVTec layout
# accepts any other category name too (custom data).
DATASET_CATEGORIES = {
    "mvtec": MVTEC_CATEGORIES,
    "btad": ("01", "02", "03"),
    "mtd": ("mtd",),
    "visa": VISA_CATEGORIES,
    "mvtec_ad_2": MVTEC_AD_2_CATEGORIES,
}
DATASET_URLS = {
    "mvtec": "https://www.mvtec.com/company/research/datasets/mvtec-ad",
    "btad": "http://avires.dimi.uniud.it/papers/btad/btad.zip",
    "mtd": "https://github.com/abin24/Magnetic-tile-defect-datasets.",
    "visa": "https://github.com/amazon-science/spot-diff",
    "mvtec_ad_2": "https://www.mvtec.com/research-teaching/datasets/mvtec-ad-2",
}
LAYOUTS = {
    "mvtec": "<root>/<category>/train/good/*.png, <root>/<category>/test/<good|defect>/*.png"
    " and <root>/<category>/ground_truth/<defect>/<name>_mask.png",
    "btad": "<root>/<category>/train/ok/*, <root>/<category>/test/<ok|ko>/*"
    " and <root>/<category>/ground_truth/ko/<name>.<png|bmp>",
    "mtd": "<root>/MT_Free/Imgs/*.jpg and <root>/MT_<defect>/Imgs/<name>.jpg with <name>.png masks",
    "visa": "<root>/split_csv/1cls.csv listing object,split,label,image,mask with the image and mask"
    " paths relative to <root>",
    "mvtec_ad_2": "<root>/<category>/<train|validation>/good/*.png, <root>/<category>/test_public/<good|bad>/*.png"
    " with <root>/<category>/test_public/ground_truth/bad/<name>_mask.png, and"
    " <root>/<category>/<test_private|test_private_mixed>/*.png",
}
# Suffixes are matched ignoring case (001.PNG, 001_mask.PNG), for images and masks alike.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# VisA's one-class split (the dataset's own, as released): one row per image, paths relative
# to the root; label "normal" or "anomaly", split "train" or "test", mask empty for normal images.
VISA_SPLIT = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")

# MTD ships no split. The paper follows [35]: 80% of the normal images, drawn at
# random, for training; the rest and every defective image for testing. The
# draw is fixed (111, the authors' training seed) so that the split never
# depends on the run's seed or on which other categories ran before.
MTD_SPLIT_SEED = 111
MTD_TRAIN_FRACTION = 0.8
MTD_NORMAL_FOLDER = "MT_Free"

# Where a dataset ships no validation split, this share of the training images, drawn once with
# HOLD_OUT_SEED (fixed, like MTD's split, so that it never depends on the run's seed), is held out of
# training to choose a decision threshold on normal images no test label has seen. A tenth leaves
# training almost whole and still gives 6 (MVTec AD toothbrush) to 40 normal images to set it.
HOLD_OUT_FRACTION = 0.1
HOLD_OUT_SEED = 111

# MVTec AD 2's test sets without ground truth, scored only for a submission to the benchmark's server.
MVTEC_AD_2_PRIVATE = ("test_private", "test_private_mixed")


@dataclass(frozen=True)
class TestSample:
    """One test image: its ground-truth mask (None for a normal image), label
    (0 normal, 1 anomalous) and defect type (the folder it came from)."""

    __test__ = False  # a data class, not a pytest test class

    image: Path
    mask: Path | None
    label: int
    defect: str
    # VisA's masks number the defect regions (1, 2, ...): every non-zero value is anomalous.
    # Elsewhere a mask holds 0 and one other value, and more values mean a damaged mask.
    numbered_mask: bool = False


@dataclass
class CategoryFiles:
    """The sorted training images (normal only) and test samples of a category."""

    train: list[Path]
    test: list[TestSample]
    # Normal images that neither training nor testing uses, to choose a threshold without the test
    # set (MVTec AD 2's validation split, or with_validation's held-out share); empty when none.
    validation: list[Path] = field(default_factory=list)
    # Images without ground truth by split name (MVTec AD 2's MVTEC_AD_2_PRIVATE), sorted; empty elsewhere.
    private: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def has_anomalies(self) -> bool:
        """False when the test set holds no anomalous image (AU-ROC undefined)."""
        return any(sample.label == 1 for sample in self.test)

    @property
    def has_normals(self) -> bool:
        """False when the test set holds no normal image (AU-ROC undefined)."""
        return any(sample.label == 0 for sample in self.test)


def category_files(dataset: str, root: str | Path, category: str) -> CategoryFiles:
    """Gather the files of `category` in `root`, laid out as `dataset` is.

    dataset: "mvtec" (also any custom folder in the MVTec layout), "btad", "mtd", "visa" or "mvtec_ad_2".
    """
    root = _checked_root(dataset, root)
    found = list_categories(dataset, root)
    if category not in found:
        found_text = ", ".join(found) or "none"
        where = root / VISA_SPLIT if dataset == "visa" else root
        missing = f"Category '{category}' not found in {where}; found: {found_text}."
        raise InputError(_absent(root / category, missing) if dataset in ("mvtec", "btad") else missing)
    if dataset == "mvtec":
        return _folder_files(root / category, normal="good", mask_suffix="_mask")
    if dataset == "btad":
        return _folder_files(root / category, normal="ok", mask_suffix="")
    if dataset == "visa":
        return _visa_files(root, category)
    if dataset == "mvtec_ad_2":
        return _mvtec_ad_2_files(root / category)
    return _mtd_files(root)


def list_categories(dataset: str, root: str | Path) -> tuple[str, ...]:
    """The category names present in `root` (sorted folder names; ("mtd",) for MTD; for VisA
    the objects of its split file, in their order there)."""
    root = _checked_root(dataset, root)
    if dataset == "mtd":
        return DATASET_CATEGORIES["mtd"]
    if dataset == "visa":
        return tuple(dict.fromkeys(row["object"] for _, row in _visa_rows(root)))
    return tuple(folder.name for folder in _subfolders(root))


def images_under(path: str | Path) -> list[Path]:
    """The image file `path`, or every image below the folder `path` (any depth, through
    symbolic links to folders; hidden files and folders skipped), sorted; suffixes as
    IMAGE_SUFFIXES, in any case.

    A broken symbolic link below `path` is listed too, whatever its name (it may have
    stood for a folder of images), so that reading it reports it with the unreadable files.
    An InputError when the path does not exist, is not an image, or holds no image.
    """
    path = Path(path).expanduser()
    kinds = ", ".join(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{path} is not an image ({kinds}); give an image file or a folder of images.")
        return [path]
    if not path.is_dir():
        raise InputError(_absent(path, f"{path} does not exist; give an image file or a folder of images to score."))
    images = []
    visited = set()  # the real paths of the folders walked: a link back up the tree is walked once
    # Path.rglob does not enter symbolic links to folders; os.walk does when asked.
    for folder, subfolders, names in os.walk(path, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            subfolders.clear()
            continue
        visited.add(real)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        images += [Path(folder) / name for name in names if not name.startswith(".")
                   and (Path(name).suffix.lower() in IMAGE_SUFFIXES or broken_link(Path(folder) / name))]
    images.sort()
    if not images:
        raise InputError(f"No images ({kinds}) under {path}; give a folder that holds the images to score.")
    return images


def _checked_root(dataset: str, root: str | Path) -> Path:
    if dataset not in DATASET_CATEGORIES:
        raise InputError(
            f"Unknown dataset '{dataset}'; choose one of {', '.join(DATASET_CATEGORIES)}."
        )
    root = Path(root).expanduser()
    if root.is_file():
        raise InputError(f"Dataset folder {root} is a file, not a folder; give the folder that holds the"
                         f" dataset, laid out as {LAYOUTS[dataset]}.")
    if not root.is_dir():
        raise InputError(_absent(
            root, f"Dataset folder {root} does not exist; expected the layout {LAYOUTS[dataset]}"
            f" (the dataset is published at {DATASET_URLS[dataset]})."
        ))
    return root


def _folder_files(folder: Path, normal: str, mask_suffix: str) -> CategoryFiles:
    """MVTec-style category folder: train/<normal>/, test/<type>/, ground_truth/<type>/.

    A defect image `<name>.<ext>` has its mask `ground_truth/<type>/<name><mask_suffix>`
    with any image extension (BTAD mixes bmp and png).
    """
    train_folder = folder / "train" / normal
    train = _images_in(train_folder)
    if not train:
        raise InputError(_absent(
            train_folder, f"No training images in {train_folder}; put the normal training images"
            f" ({', '.join(IMAGE_SUFFIXES)}) there."
        ))
    test_folder = folder / "test"
    defect_folders = _subfolders(test_folder)
    # Every broken link standing for a test folder, and every defect image without a mask, reported together.
    problems = [broken_link(link) for link in _broken_links_in(test_folder)]
    if not defect_folders and not problems:
        raise InputError(_absent(
            test_folder, f"No test images in {test_folder}; expected a subfolder '{normal}' for normal"
            " images and one per defect type."
        ))
    test = []
    for defect_folder in defect_folders:
        images = _images_in(defect_folder)
        if not images:
            raise InputError(f"Test folder {defect_folder} holds no images; add images or remove it.")
        defect = defect_folder.name
        if defect == normal:
            test += [TestSample(image, None, 0, defect) for image in images]
            continue
        mask_folder = folder / "ground_truth" / defect
        masks = _files_by_lower_name(mask_folder)
        for image in images:
            mask = _mask_for(image, mask_folder / (image.stem + mask_suffix), masks, IMAGE_SUFFIXES, problems)
            test.append(TestSample(image, mask, 1, defect))
    _report(problems, f"the files of {folder}")
    return CategoryFiles(train, test)


def _visa_rows(root: Path) -> list[tuple[int, dict[str, str]]]:
    """The rows of VisA's split file as (line number, row), after checking its columns."""
    split = root / VISA_SPLIT
    if not split.is_file():
        raise InputError(_absent(
            split, f"VisA split file {split} does not exist; expected the dataset as released,"
            f" {LAYOUTS['visa']} (published at {DATASET_URLS['visa']})."
        ))
    try:
        # utf-8-sig: a file saved by a spreadsheet program starts with a byte-order mark, which would
        # otherwise become part of the first column's name.
        with open(split, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            rows = list(enumerate(reader, start=2))  # line 1 is the header
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"Cannot read VisA split file {split} ({error}); replace it with the released one"
                         f" from {DATASET_URLS['visa']}.") from None
    missing = [column for column in VISA_COLUMNS if column not in columns]
    if missing:
        raise InputError(f"VisA split file {split} has no column {', '.join(missing)}; expected the header"
                         f" {','.join(VISA_COLUMNS)} as released at {DATASET_URLS['visa']}.")
    return rows


def _visa_files(root: Path, category: str) -> CategoryFiles:
    """VisA: the rows of `category` in split_csv/1cls.csv, every listed file checked to exist."""
    split = root / VISA_SPLIT
    train, test, problems = [], [], []
    for line, row in _visa_rows(root):
        if row["object"] != category:
            continue
        where = f"{split} line {line}"
        split_name, label = row["split"], row["label"]
        if split_name not in ("train", "test") or label not in ("normal", "anomaly"):
            problems.append(f"{where} has split {split_name!r} and label {label!r}; expected split train or"
                            " test and label normal or anomaly.")
            continue
        if split_name == "train" and label != "normal":
            problems.append(f"{where} lists an anomalous training image; one-class training takes normal"
                            " images only, so move it to the test split.")
            continue
        image = root / row["image"]
        if not image.is_file():
            problems.append(_absent(image, f"VisA image {image} listed in {where} does not exist; restore it"
                                           f" from {DATASET_URLS['visa']}."))
            continue
        if split_name == "train":
            train.append(image)
        elif label == "normal":
            test.append(TestSample(image, None, 0, "good"))
        elif not row["mask"] or not (root / row["mask"]).is_file():
            shown = root / row["mask"] if row["mask"] else "no mask path"
            missing = f"VisA mask {shown} of {image} ({where}) does not exist; restore it from {DATASET_URLS['visa']}."
            problems.append(_absent(root / row["mask"], missing) if row["mask"] else missing)
        else:
            test.append(TestSample(image, root / row["mask"], 1, "anomaly", numbered_mask=True))
    _report(problems, f"the VisA files of {category}")
    if not train:
        raise InputError(f"{split} lists no training image of {category}; use the split file as released"
                         f" at {DATASET_URLS['visa']}.")
    if not test:
        raise InputError(f"{split} lists no test image of {category}; use the split file as released"
                         f" at {DATASET_URLS['visa']}.")
    # Sorted like the folder layouts (anomalous before normal, then by path), whatever the row order.
    return CategoryFiles(sorted(train), sorted(test, key=lambda sample: (sample.defect, sample.image)))


def _mtd_files(root: Path) -> CategoryFiles:
    """MTD: a seeded 80/20 split of MT_Free, every MT_<defect> image in the test set."""
    normal_folder = root / MTD_NORMAL_FOLDER / "Imgs"
    # Only the .jpg files are images; MT_* folders also hold the .png masks.
    normals = _images_in(normal_folder, suffixes=(".jpg",))
    train, held_out = hold_out(normals, 1 - MTD_TRAIN_FRACTION, MTD_SPLIT_SEED)
    if not train:
        raise InputError(_absent(
            normal_folder, f"No training images in {normal_folder}; expected the defect-free MTD images"
            " as *.jpg there."
        ))
    test = [TestSample(image, None, 0, MTD_NORMAL_FOLDER) for image in held_out]
    problems = [broken_link(link) for link in _broken_links_in(root) if link.name.startswith("MT_")]
    for defect_folder in _subfolders(root):
        if not defect_folder.name.startswith("MT_") or defect_folder.name == MTD_NORMAL_FOLDER:
            continue
        images = _images_in(defect_folder / "Imgs", suffixes=(".jpg",))
        if not images:
            raise InputError(_absent(
                defect_folder / "Imgs", f"Test folder {defect_folder / 'Imgs'} holds no .jpg images; add images"
                " or remove the folder."
            ))
        masks = _files_by_lower_name(defect_folder / "Imgs")
        for image in images:
            mask = _mask_for(image, image.with_suffix(""), masks, (".png",), problems)
            test.append(TestSample(image, mask, 1, defect_folder.name))
    _report(problems, f"the files of {root}")
    return CategoryFiles(train, test)


def _mvtec_ad_2_files(folder: Path) -> CategoryFiles:
    """MVTec AD 2 as released: train/good/ for training, validation/good/ as `validation`,
    test_public/ (good/, bad/, masks ground_truth/bad/<name>_mask.png) as the test set and
    test_private/, test_private_mixed/ (no ground truth) as `private`. Every missing or empty
    folder is reported at once, one sentence each."""
    where = {"train": folder / "train" / "good", "validation": folder / "validation" / "good",
             "good": folder / "test_public" / "good", "bad": folder / "test_public" / "bad",
             **{split: folder / split for split in MVTEC_AD_2_PRIVATE}}
    found = {name: _images_in(path) for name, path in where.items()}
    empty = [f"MVTec AD 2 folder {where[name]} {'holds no images' if where[name].is_dir() else 'does not exist'};"
             f" restore it from the release at {DATASET_URLS['mvtec_ad_2']}." for name, images in found.items()
             if not images]
    if empty:
        raise InputError.listed(f"{len(empty)} folders of {folder} are missing or empty; restore each:", empty)
    mask_folder = folder / "test_public" / "ground_truth" / "bad"
    masks = _files_by_lower_name(mask_folder)
    missing: list[str] = []
    bad = [TestSample(image, _mask_for(image, mask_folder / (image.stem + "_mask"), masks, IMAGE_SUFFIXES, missing),
                      1, "bad") for image in found["bad"]]
    _report(missing, f"the files of {folder}")
    # Sorted like the other layouts: anomalous ("bad") before normal ("good"), then by path.
    return CategoryFiles(found["train"], bad + [TestSample(image, None, 0, "good") for image in found["good"]],
                         validation=found["validation"],
                         private={split: found[split] for split in MVTEC_AD_2_PRIVATE})


def hold_out(files: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Split `files` into (kept, held out), each sorted: round(fraction * len(files)) of them, drawn
    by a permutation from `seed`, are held out. The split depends only on the set of files, the
    fraction and the seed, not on the order the files come in. fraction: in [0, 1)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must lie in [0, 1), got {fraction}.")
    files = sorted(files)
    order = np.random.default_rng(seed).permutation(len(files))
    n_kept = len(files) - round(fraction * len(files))
    return sorted(files[i] for i in order[:n_kept]), sorted(files[i] for i in order[n_kept:])


def with_validation(files: CategoryFiles, fraction: float = HOLD_OUT_FRACTION,
                    seed: int = HOLD_OUT_SEED) -> CategoryFiles:
    """`files` with a validation set: as it is when the dataset ships one (MVTec AD 2), else with
    hold_out's share of the training images moved from `train` to `validation`."""
    if files.validation:
        return files
    train, validation = hold_out(files.train, fraction, seed)
    if not validation or not train:
        raise InputError(f"{len(files.train)} training images are too few to hold {fraction:.0%} of them out"
                         " for a threshold on normal images; add training images.")
    return replace(files, train=train, validation=validation)


def broken_link(path: Path) -> str | None:
    """The sentence saying that `path` is a symbolic link to nothing (its target was moved, or
    lives on a disk that is not mounted); None when it is not."""
    if not path.is_symlink() or path.exists():
        return None
    return (f"{path} is a broken symbolic link: its target {os.readlink(path)} does not exist; restore the"
            " target or point the link elsewhere.")


def _absent(path: Path, sentence: str) -> str:
    """`sentence`, saying that `path` is missing, unless `path` or a folder above it is a broken
    symbolic link: then the sentence naming that link, the thing to fix."""
    for place in (path, *path.parents):
        broken = broken_link(place)
        if broken:
            return broken
    return sentence


def _report(problems: list[str], where: str) -> None:
    """One InputError listing `problems`, those of `where` (e.g. "the files of <folder>"), each once: a
    broken link to a folder is otherwise named once per file in it. Nothing when there are none."""
    if problems:
        problems = list(dict.fromkeys(problems))
        raise InputError.listed(f"{len(problems)} problems with {where}; fix each:", problems)


def _mask_for(image: Path, mask_stem: Path, files: dict[str, Path], suffixes: tuple[str, ...],
              problems: list[str]) -> Path | None:
    """The file `mask_stem` + one of `suffixes` among `files` (by lower-cased name), or
    None after appending to `problems` the sentence saying which name was expected."""
    for suffix in suffixes:
        mask = files.get((mask_stem.name + suffix).lower())
        if mask is not None:
            return mask
    extensions = "|".join(suffix.lstrip(".") for suffix in suffixes)
    problems.append(_absent(
        mask_stem.parent, f"Defect image {image} has no ground-truth mask; expected"
        f" {mask_stem.name}.<{extensions}> in {mask_stem.parent}."
    ))
    return None


def _files_by_lower_name(folder: Path) -> dict[str, Path]:
    """The files directly in `folder`, broken symbolic links included (reading one reports it),
    keyed by lower-cased name (empty when it does not exist).

    Of names that differ only in case, the first in sorted order is kept.
    """
    if not folder.is_dir():
        return {}
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() or broken_link(path):
            files.setdefault(path.name.lower(), path)
    return files


def _images_in(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Sorted image files directly in `folder` (empty when it does not exist), broken symbolic
    links with an image's name included: reading one reports it, and the set never shrinks silently."""
    if not folder.is_dir():
        return []
    return sorted(
        path for path in folder.iterdir()
        if (path.is_file() or broken_link(path)) and path.suffix.lower() in suffixes and not path.name.startswith(".")
    )


def _subfolders(folder: Path) -> list[Path]:
    """Sorted visible subfolders (hidden ones such as .ipynb_checkpoints skipped)."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def _broken_links_in(folder: Path) -> list[Path]:
    """Sorted visible broken symbolic links directly in `folder`: where subfolders are expected, each
    may have been one (a defect type, a category) and must be reported, not skipped."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if broken_link(path) and not path.name.startswith("."))
