"""File discovery, image loading and the training/test datasets, on tiny fake folders."""

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dataset import demo, folders, images
from dataset.check import check_files
from dataset.folders import category_files
from dataset.images import EpochSampler, TestImages, TrainImages
from utils.errors import InputError


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _noise(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _mask(size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[: size // 2, : size // 2] = 255
    return mask


def _mvtec(root: Path, category: str = "bottle", n_train: int = 3, n_good: int = 2,
           defects: dict[str, int] | None = None) -> Path:
    """A fake MVTec category; names are written out of order to check sorting."""
    defects = {"crack": 2, "broken": 1} if defects is None else defects
    folder = root / category
    for i in reversed(range(n_train)):
        _write(folder / "train" / "good" / f"{i:03d}.png", _noise(i))
    for i in reversed(range(n_good)):
        _write(folder / "test" / "good" / f"{i:03d}.png", _noise(100 + i))
    for defect, count in defects.items():
        for i in reversed(range(count)):
            _write(folder / "test" / defect / f"{i:03d}.png", _noise(200 + i))
            _write(folder / "ground_truth" / defect / f"{i:03d}_mask.png", _mask())
    return folder


# ---- file discovery -------------------------------------------------------

def test_mvtec_layout(tmp_path):
    folder = _mvtec(tmp_path)
    files = category_files("mvtec", tmp_path, "bottle")
    assert files.train == [folder / "train" / "good" / f"{i:03d}.png" for i in range(3)]
    assert [(s.defect, s.image.name, s.label) for s in files.test] == [
        ("broken", "000.png", 1),
        ("crack", "000.png", 1), ("crack", "001.png", 1),
        ("good", "000.png", 0), ("good", "001.png", 0),
    ]
    for sample in files.test:
        if sample.label:
            assert sample.mask == folder / "ground_truth" / sample.defect / f"{sample.image.stem}_mask.png"
        else:
            assert sample.mask is None
    assert files.has_anomalies and files.has_normals


def test_custom_category_name(tmp_path):
    _mvtec(tmp_path, category="my_parts")
    files = category_files("mvtec", str(tmp_path), "my_parts")
    assert len(files.train) == 3 and len(files.test) == 5


def test_btad_layout_with_bmp_and_png(tmp_path):
    folder = tmp_path / "01"
    _write(folder / "train" / "ok" / "0000.bmp", _noise(0))
    _write(folder / "train" / "ok" / "0001.png", _noise(1))
    _write(folder / "test" / "ok" / "0000.bmp", _noise(2))
    _write(folder / "test" / "ko" / "0000.bmp", _noise(3))
    _write(folder / "test" / "ko" / "0001.png", _noise(4))
    _write(folder / "ground_truth" / "ko" / "0000.png", _mask())  # bmp image, png mask
    _write(folder / "ground_truth" / "ko" / "0001.bmp", _mask())  # png image, bmp mask
    files = category_files("btad", tmp_path, "01")
    assert [p.name for p in files.train] == ["0000.bmp", "0001.png"]
    assert [(s.image.name, s.mask and s.mask.name, s.label) for s in files.test] == [
        ("0000.bmp", "0000.png", 1), ("0001.png", "0001.bmp", 1), ("0000.bmp", None, 0),
    ]


def _mtd(root: Path, n_free: int = 10) -> Path:
    for i in range(n_free):
        _write(root / "MT_Free" / "Imgs" / f"free_{i:02d}.jpg", _noise(i))
    _write(root / "MT_Free" / "Imgs" / "free_00.png", _mask())  # a mask in MT_Free is no image
    for defect in ("MT_Blowhole", "MT_Crack"):
        for i in range(2):
            _write(root / defect / "Imgs" / f"{defect}_{i}.jpg", _noise(50 + i))
            _write(root / defect / "Imgs" / f"{defect}_{i}.png", _mask())
    return root


def _visa(root: Path, category: str = "pcb1", rows: list[tuple] | None = None) -> Path:
    """A fake VisA release: split_csv/1cls.csv (rows written out of order) and the files it lists;
    the anomalous image's mask numbers two defect regions 1 and 2, as VisA's masks do."""
    rows = rows if rows is not None else [
        (category, "test", "normal", f"{category}/Data/Images/Normal/0003.JPG", ""),
        (category, "train", "normal", f"{category}/Data/Images/Normal/0001.JPG", ""),
        ("candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""),
        (category, "test", "anomaly", f"{category}/Data/Images/Anomaly/0000.JPG",
         f"{category}/Data/Masks/Anomaly/0000.png"),
        (category, "train", "normal", f"{category}/Data/Images/Normal/0000.JPG", ""),
    ]
    numbered = np.zeros((32, 32), dtype=np.uint8)
    numbered[:4, :4], numbered[20:, 20:] = 1, 2
    for i, (_, _, _, image, mask) in enumerate(rows):
        _write(root / image, _noise(i))
        if mask:
            _write(root / mask, numbered)
    lines = ["object,split,label,image,mask"] + [",".join(row) for row in rows]
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(lines) + "\n")
    return root


def test_visa_split_file(tmp_path):
    _visa(tmp_path)
    assert folders.list_categories("visa", tmp_path) == ("pcb1", "candle")
    files = category_files("visa", tmp_path, "pcb1")
    images_folder = tmp_path / "pcb1" / "Data" / "Images"
    assert files.train == [images_folder / "Normal" / "0000.JPG", images_folder / "Normal" / "0001.JPG"]
    assert [(s.image, s.mask, s.label, s.defect) for s in files.test] == [
        (images_folder / "Anomaly" / "0000.JPG", tmp_path / "pcb1" / "Data" / "Masks" / "Anomaly" / "0000.png", 1,
         "anomaly"),
        (images_folder / "Normal" / "0003.JPG", None, 0, "good"),
    ]
    # Every non-zero value of a numbered mask is anomalous, and the pre-flight check accepts it.
    check_files({"pcb1": files})
    masks = TestImages(files.test, 32).masks
    assert masks[0].sum() == 16 + 144 and not masks[1].any()


@pytest.mark.parametrize("damage, message", [
    ("csv", "VisA split file {root}/split_csv/1cls.csv does not exist; expected the dataset as released"),
    ("image", "VisA image {root}/pcb1/Data/Images/Normal/0001.JPG listed in {root}/split_csv/1cls.csv line 3"
              " does not exist; restore it from https://github.com/amazon-science/spot-diff."),
    ("mask", "VisA mask {root}/pcb1/Data/Masks/Anomaly/0000.png of {root}/pcb1/Data/Images/Anomaly/0000.JPG"
             " ({root}/split_csv/1cls.csv line 5) does not exist; restore it from"),
    ("column", "VisA split file {root}/split_csv/1cls.csv has no column mask; expected the header"
               " object,split,label,image,mask"),
    ("label", "{root}/split_csv/1cls.csv line 2 has split 'test' and label 'bad'; expected split train or test"),
])
def test_visa_problems_name_the_file_and_the_download_page(tmp_path, damage, message):
    root = _visa(tmp_path)
    split = root / "split_csv" / "1cls.csv"
    if damage == "csv":
        split.unlink()
    elif damage == "image":
        (root / "pcb1" / "Data" / "Images" / "Normal" / "0001.JPG").unlink()
    elif damage == "mask":
        (root / "pcb1" / "Data" / "Masks" / "Anomaly" / "0000.png").unlink()
    elif damage == "column":
        split.write_text(split.read_text().replace(",mask\n", ",masks\n", 1))
    else:
        split.write_text(split.read_text().replace("test,normal", "test,bad", 1))
    with pytest.raises(InputError) as error:
        category_files("visa", root, "pcb1")
    assert str(error.value).startswith(message.format(root=root))
    assert "\n" not in str(error.value)
    if damage != "label":
        assert folders.DATASET_URLS["visa"] in str(error.value)


def test_mtd_split(tmp_path):
    _mtd(tmp_path)
    files = category_files("mtd", tmp_path, "mtd")
    normals = [s.image for s in files.test if s.label == 0]
    defective = [s for s in files.test if s.label == 1]
    assert len(files.train) == 8 and len(normals) == 2
    assert not set(files.train) & set(normals)
    assert all(p.suffix == ".jpg" for p in files.train + normals)
    assert files.train == sorted(files.train)
    assert [s.image.name for s in defective] == [
        "MT_Blowhole_0.jpg", "MT_Blowhole_1.jpg", "MT_Crack_0.jpg", "MT_Crack_1.jpg"]
    assert all(s.mask == s.image.with_suffix(".png") for s in defective)
    again = category_files("mtd", tmp_path, "mtd")
    assert again.train == files.train and again.test == files.test


# ---- bad input ------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["mvtec", "btad", "mtd", "visa"])
def test_missing_root_names_path_and_url(tmp_path, dataset):
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError) as error:
        category_files(dataset, missing, folders.DATASET_CATEGORIES[dataset][0])
    assert str(missing) in str(error.value)
    assert folders.DATASET_URLS[dataset] in str(error.value)


def test_unknown_dataset(tmp_path):
    with pytest.raises(InputError, match="Unknown dataset 'imagenet'; choose one of mvtec, btad, mtd, visa"):
        category_files("imagenet", tmp_path, "bottle")


def test_missing_category_lists_found(tmp_path):
    _mvtec(tmp_path, "bottle")
    _mvtec(tmp_path, "cable")
    with pytest.raises(InputError, match="Category 'screw' not found .*; found: bottle, cable"):
        category_files("mvtec", tmp_path, "screw")


def test_empty_train_folder(tmp_path):
    _mvtec(tmp_path, n_train=0)
    with pytest.raises(InputError, match="No training images in .*train.good"):
        category_files("mvtec", tmp_path, "bottle")


def test_defect_without_mask_names_file(tmp_path):
    folder = _mvtec(tmp_path)
    (folder / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(InputError) as error:
        category_files("mvtec", tmp_path, "bottle")
    assert str(folder / "test" / "crack" / "001.png") in str(error.value)
    assert "001_mask.<png|" in str(error.value)


def test_every_missing_mask_of_a_category_is_reported_at_once(tmp_path):
    folder = _mvtec(tmp_path)
    for defect, name in [("crack", "000"), ("crack", "001"), ("broken", "000")]:
        (folder / "ground_truth" / defect / f"{name}_mask.png").unlink()
    with pytest.raises(InputError) as error:
        category_files("mvtec", tmp_path, "bottle")
    lines = str(error.value).splitlines()
    assert lines[0] == f"3 problems with the files of {folder}; fix each:"
    assert [line.split()[2] for line in lines[1:]] == [
        str(folder / "test" / defect / f"{name}.png")
        for defect, name in [("broken", "000"), ("crack", "000"), ("crack", "001")]]


def test_mask_suffix_case_is_ignored(tmp_path):
    folder = _mvtec(tmp_path / "mvtec")
    upper = folder / "ground_truth" / "crack" / "001_mask.PNG"
    (folder / "ground_truth" / "crack" / "001_mask.png").rename(upper)
    assert category_files("mvtec", tmp_path / "mvtec", "bottle").test[2].mask == upper

    btad = tmp_path / "btad" / "01"
    _write(btad / "train" / "ok" / "0000.bmp", _noise(0))
    _write(btad / "test" / "ko" / "0000.BMP", _noise(1))
    upper = _write(btad / "ground_truth" / "ko" / "0000.PNG", _mask())
    assert category_files("btad", tmp_path / "btad", "01").test[0].mask == upper

    mtd = _mtd(tmp_path / "mtd")
    upper = mtd / "MT_Crack" / "Imgs" / "MT_Crack_1.PNG"
    (mtd / "MT_Crack" / "Imgs" / "MT_Crack_1.png").rename(upper)
    assert category_files("mtd", mtd, "mtd").test[-1].mask == upper


def test_test_folder_without_images(tmp_path):
    folder = _mvtec(tmp_path)
    (folder / "test" / "scratch").mkdir()
    with pytest.raises(InputError, match="Test folder .*scratch holds no images"):
        category_files("mvtec", tmp_path, "bottle")


def test_missing_test_folder(tmp_path):
    _mvtec(tmp_path, n_good=0, defects={})
    with pytest.raises(InputError, match="No test images in .*test"):
        category_files("mvtec", tmp_path, "bottle")


def test_category_without_anomalies_is_reported(tmp_path):
    _mvtec(tmp_path, defects={})
    files = category_files("mvtec", tmp_path, "bottle")
    assert not files.has_anomalies and files.has_normals
    dataset = TestImages(files.test, 16)
    assert dataset.labels.tolist() == [0, 0] and not dataset.masks.any()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_names_file(tmp_path, damage):
    folder = _mvtec(tmp_path)
    broken = folder / "train" / "good" / "001.png"
    data = broken.read_bytes()
    broken.write_bytes(b"not an image" if damage == "garbage" else data[: len(data) // 2])
    files = category_files("mvtec", tmp_path, "bottle")
    with pytest.raises(InputError, match=re.escape(f"Cannot read image {broken}")):
        TrainImages(files.train, "bottle", 16)


# ---- every file checked before training ------------------------------------

@pytest.fixture
def demo_copy(tmp_path, demo_dir) -> Path:
    """A copy of the demo dataset (MVTec layout, two categories) that a test may damage."""
    demo.make_demo_dataset(demo_dir)
    return Path(shutil.copytree(demo_dir, tmp_path / "data"))


def _all_files(root: Path) -> dict[str, folders.CategoryFiles]:
    return {category: category_files("mvtec", root, category) for category in demo.DEMO_CATEGORIES}


def test_check_files_passes_good_data_and_masks_of_zeros_and_ones(demo_copy):
    mask = demo_copy / "demo_texture" / "ground_truth" / "scratch" / "000_mask.png"
    before = TestImages(_all_files(demo_copy)["demo_texture"].test, 32).masks
    assert before.any()
    _write(mask, (images.read_mask(mask) > 0).astype(np.uint8))  # 0/255 -> 0/1
    files = _all_files(demo_copy)
    check_files(files)
    np.testing.assert_array_equal(TestImages(files["demo_texture"].test, 32).masks, before)


def test_check_files_reports_every_problem_of_every_category_at_once(demo_copy):
    texture, nut = demo_copy / "demo_texture", demo_copy / "demo_object"
    truncated = texture / "train" / "good" / "001.png"
    truncated.write_bytes(truncated.read_bytes()[:2000])
    garbage = nut / "test" / "good" / "000.png"
    garbage.write_bytes(b"not an image")
    grey_edge = texture / "ground_truth" / "scratch" / "000_mask.png"
    values = images.read_mask(grey_edge).copy()
    values[0, 0] = 128
    _write(grey_edge, values)
    empty = _write(nut / "ground_truth" / "spot" / "001_mask.png", np.zeros((128, 128), dtype=np.uint8))
    stretched = _write(nut / "ground_truth" / "color" / "002_mask.png", _mask(128)[:96])
    broken_mask = nut / "ground_truth" / "missing" / "000_mask.png"
    broken_mask.write_bytes(broken_mask.read_bytes()[:100])
    with pytest.raises(InputError) as error:
        check_files(_all_files(demo_copy), workers=2)
    lines = str(error.value).splitlines()
    assert lines[0] == "6 problems in the dataset files; fix or replace each file named:"
    assert len(lines) == 7
    # In the order of the categories, then of their training and test files.
    assert lines[1].startswith(f"  Cannot read image {truncated} (image file is truncated")
    assert lines[2].startswith(f"  Mask {grey_edge} is not binary (3 values: 0, 128, 255);")
    assert lines[3].startswith(f"  Mask {stretched} is 128x96 pixels but its image"
                               f" {nut / 'test' / 'color' / '002.png'} is 128x128;")
    assert lines[4].startswith(f"  Cannot read image {garbage} (")
    assert lines[5].startswith(f"  Cannot read image {broken_mask} (")
    assert lines[6].startswith(f"  Mask {empty} is empty (all 0) although {nut / 'test' / 'spot' / '001.png'}")


def test_check_files_lists_at_most_twenty_problems(tmp_path):
    folder = _mvtec(tmp_path, n_train=25)
    for path in (folder / "train" / "good").iterdir():
        path.write_bytes(b"")
    with pytest.raises(InputError) as error:
        check_files({"bottle": category_files("mvtec", tmp_path, "bottle")})
    lines = str(error.value).splitlines()
    assert lines[0] == "25 problems in the dataset files; fix or replace each file named:"
    assert len(lines) == 22 and lines[-1] == "  ... and 5 more."
    assert lines[20].startswith(f"  Cannot read image {folder / 'train' / 'good' / '019.png'} (")


def test_check_files_gives_a_single_problem_as_one_sentence(tmp_path):
    folder = _mvtec(tmp_path)
    broken = folder / "test" / "crack" / "001.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(InputError) as error:
        check_files({"bottle": category_files("mvtec", tmp_path, "bottle")})
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"Cannot read image {broken} (") and message.endswith("; replace or remove the file.")


# ---- symbolic links -------------------------------------------------------

def _broken(link: Path) -> str:
    """The start of the sentence naming the broken link `link`."""
    return f"{link} is a broken symbolic link: its target {link.parent / 'gone'} does not exist;"


def _link_to_nothing(link: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(link.parent / "gone")
    return link


def test_links_that_resolve_are_followed(tmp_path):
    """Datasets behind links (a scratch disk, a shared folder): the root, a category, a folder, a file."""
    storage = _mvtec(tmp_path / "storage")
    (tmp_path / "shared_train").mkdir()
    (storage / "train" / "good").rename(tmp_path / "shared_train" / "good")
    (storage / "train" / "good").symlink_to(tmp_path / "shared_train" / "good")
    image = storage / "test" / "crack" / "001.png"
    image.rename(tmp_path / "001.png")
    image.symlink_to(tmp_path / "001.png")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bottle").symlink_to(storage)
    (tmp_path / "linked_root").symlink_to(tmp_path / "data")
    files = category_files("mvtec", tmp_path / "linked_root", "bottle")
    assert len(files.train) == 3 and len(files.test) == 5 and image.name in [s.image.name for s in files.test]
    check_files({"bottle": files})
    assert TestImages(files.test, 16).images.any()


def test_broken_links_to_images_and_masks_are_listed_with_the_unreadable_files(tmp_path):
    folder = _mvtec(tmp_path)
    train_link = _link_to_nothing(folder / "train" / "good" / "003.png")
    test_link = _link_to_nothing(folder / "test" / "good" / "002.png")
    mask = folder / "ground_truth" / "crack" / "000_mask.png"
    mask.unlink()
    _link_to_nothing(mask)
    files = category_files("mvtec", tmp_path, "bottle")
    # Counted, not dropped: 3 + 1 training images, 5 + 1 test images.
    assert len(files.train) == 4 and len(files.test) == 6
    garbage = folder / "test" / "broken" / "000.png"
    garbage.write_bytes(b"not an image")
    with pytest.raises(InputError) as error:
        check_files({"bottle": files})
    lines = str(error.value).splitlines()
    assert lines[0] == "4 problems in the dataset files; fix or replace each file named:"
    assert lines[1].startswith("  " + _broken(train_link))
    assert lines[2].startswith(f"  Cannot read image {garbage} (")
    assert lines[3].startswith("  " + _broken(mask))
    assert lines[4].startswith("  " + _broken(test_link))
    with pytest.raises(InputError, match=re.escape(_broken(train_link))):
        TrainImages(files.train, "bottle", 16)


def test_broken_links_where_folders_belong_are_reported_together(tmp_path):
    folder = _mvtec(tmp_path)
    shutil.rmtree(folder / "ground_truth" / "crack")
    mask_folder = _link_to_nothing(folder / "ground_truth" / "crack")
    test_folder = _link_to_nothing(folder / "test" / "scratch")
    (folder / "ground_truth" / "broken" / "000_mask.png").unlink()
    with pytest.raises(InputError) as error:
        category_files("mvtec", tmp_path, "bottle")
    lines = str(error.value).splitlines()
    # The mask folder's link is named once, not once per image of the crack folder.
    assert lines[0] == f"3 problems with the files of {folder}; fix each:"
    assert lines[1].startswith("  " + _broken(test_folder))
    assert lines[2].startswith(f"  Defect image {folder / 'test' / 'broken' / '000.png'} has no ground-truth mask")
    assert lines[3].startswith("  " + _broken(mask_folder))


@pytest.mark.parametrize("broken", ["root", "category", "train", "test"])
def test_a_broken_link_on_the_way_to_the_files_is_named(tmp_path, broken):
    folder = _mvtec(tmp_path / "data")
    link = {"root": tmp_path / "data", "category": folder, "train": folder / "train" / "good",
            "test": folder / "test"}[broken]
    shutil.rmtree(link)
    _link_to_nothing(link)
    with pytest.raises(InputError) as error:
        category_files("mvtec", tmp_path / "data", "bottle")
    assert str(error.value).startswith(_broken(link)) and "\n" not in str(error.value)


def test_broken_links_in_the_visa_and_mtd_layouts(tmp_path):
    visa = _visa(tmp_path / "visa")
    image = visa / "pcb1" / "Data" / "Images" / "Normal" / "0001.JPG"
    image.unlink()
    _link_to_nothing(image)
    masks = visa / "pcb1" / "Data" / "Masks"
    shutil.rmtree(masks)
    _link_to_nothing(masks)
    with pytest.raises(InputError) as error:
        category_files("visa", visa, "pcb1")
    lines = str(error.value).splitlines()
    assert lines[0] == "2 problems with the VisA files of pcb1; fix each:"
    assert lines[1].startswith("  " + _broken(image)) and lines[2].startswith("  " + _broken(masks))

    mtd = _mtd(tmp_path / "mtd")
    defect = _link_to_nothing(mtd / "MT_Fray")
    mask = mtd / "MT_Crack" / "Imgs" / "MT_Crack_1.png"
    mask.unlink()
    _link_to_nothing(mask)
    with pytest.raises(InputError, match=re.escape(_broken(defect))):
        category_files("mtd", mtd, "mtd")
    defect.unlink()
    files = category_files("mtd", mtd, "mtd")
    with pytest.raises(InputError, match=re.escape(_broken(mask))):
        check_files({"mtd": files})


def test_images_under_follow_links_and_keep_broken_ones(tmp_path):
    elsewhere = _write(tmp_path / "elsewhere" / "batch" / "b.png", _noise(0)).parent
    folder = tmp_path / "to_score"
    found = [_write(folder / "a.png", _noise(1))]
    (folder / "batch").symlink_to(elsewhere)
    (folder / "batch" / "again").symlink_to(folder)  # a loop: walked once
    broken_image = _link_to_nothing(folder / "c.png")
    broken_folder = _link_to_nothing(folder / "d")  # perhaps a folder of images
    listed = folders.images_under(folder)
    assert listed == sorted([*found, folder / "batch" / "b.png", broken_image, broken_folder])
    # Scoring reads the others and reports the broken links with the unreadable files.
    problems = dict(zip(listed, (problem for _, _, _, problem in images.ImageFiles(listed, 16))))
    assert [path for path, problem in problems.items() if problem] == [broken_image, broken_folder]
    assert problems[broken_image].startswith(_broken(broken_image))


def test_a_broken_link_given_to_score_is_named(tmp_path):
    link = _link_to_nothing(tmp_path / "to_score")
    with pytest.raises(InputError, match=re.escape(_broken(link))):
        folders.images_under(link)


# ---- the data folder, the split file, very large images -------------------

@pytest.mark.parametrize("dataset", ["mvtec", "visa"])
def test_a_data_dir_that_is_a_file_is_called_a_file(tmp_path, dataset):
    file = tmp_path / "data.zip"
    file.write_bytes(b"PK")
    with pytest.raises(InputError) as error:
        category_files(dataset, file, folders.DATASET_CATEGORIES[dataset][0])
    assert str(error.value).startswith(f"Dataset folder {file} is a file, not a folder; give the folder that holds")


def test_a_visa_split_file_with_a_byte_order_mark_is_read(tmp_path):
    root = _visa(tmp_path)
    split = root / "split_csv" / "1cls.csv"
    split.write_text(split.read_text(), encoding="utf-8-sig")  # as a spreadsheet program saves it
    assert split.read_bytes().startswith(b"\xef\xbb\xbf")
    assert folders.list_categories("visa", root) == ("pcb1", "candle")
    assert len(category_files("visa", root, "pcb1").train) == 2


def test_images_over_pils_limit_are_read_up_to_ours(tmp_path, monkeypatch):
    """PIL's decompression-bomb limit stands in small (100 pixels) for its 89 megapixels, ours (1000) for 2**30."""
    folder = _mvtec(tmp_path)  # 32x32 images: over 2 * 100 pixels, so PIL alone would refuse them
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    files = category_files("mvtec", tmp_path, "bottle")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        check_files({"bottle": files}, workers=4)
        assert images.load_image(files.train[0], 16).shape == (16, 16, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # lifted for our reads only
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    image = folder / "train" / "good" / "000.png"
    with pytest.raises(InputError) as error:
        images.load_image(image, 16)
    assert str(error.value) == (f"Image {image} is 32x32 pixels, more than the 1,000 (dataset.images.MAX_PIXELS)"
                                " this program decodes; save it smaller or cut it into tiles.")


# ---- loading --------------------------------------------------------------

def test_image_resized_and_normalised(tmp_path):
    path = _write(tmp_path / "a.png", np.full((40, 30, 3), (255, 0, 128), dtype=np.uint8))
    tensor = images.to_tensor(images.load_image(path, 8))
    assert tensor.shape == (3, 8, 8) and tensor.dtype == torch.float32
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert torch.allclose(tensor[:, 3, 5], torch.tensor(expected), atol=1e-5)


def test_grayscale_becomes_rgb(tmp_path):
    gray = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    image = images.load_image(_write(tmp_path / "g.png", gray), 16)
    assert image.shape == (16, 16, 3)
    assert (image[..., 0] == gray).all() and (image[..., 1] == gray).all() and (image[..., 2] == gray).all()


@pytest.mark.parametrize("anomalous", [1, 255, 65535])
def test_mask_nearest_and_any_one_value_anomalous(tmp_path, anomalous):
    mask = np.zeros((4, 4), dtype=np.uint16 if anomalous > 255 else np.uint8)
    mask[:, :2] = anomalous
    loaded = images.load_mask(_write(tmp_path / "m.png", mask), 8)
    assert loaded.dtype == bool
    assert loaded[:, :4].all() and not loaded[:, 4:].any()


def test_mask_that_is_not_binary_is_an_error_naming_it(tmp_path):
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:, :2], mask[:, 2] = 255, 128  # an antialiased edge
    path = _write(tmp_path / "m.png", mask)
    with pytest.raises(InputError) as error:
        images.load_mask(path, 8)
    assert str(error.value) == (
        f"Mask {path} is not binary (3 values: 0, 128, 255); save it with 0 for normal pixels and one"
        " value (1 or 255) for anomalous ones."
    )


@pytest.mark.parametrize("values, suffix", [
    (np.linspace(0, 65535, 256).round().astype(np.uint16), ".png"),  # PIL mode I;16
    (np.linspace(0, 65535, 256).round().astype(">u2"), ".tif"),  # I;16B
    (np.linspace(0, 2**31 - 1, 256).round().astype(np.int32), ".tif"),  # I, 32-bit
])
def test_high_bit_depth_grayscale_is_scaled_to_eight_bits(tmp_path, values, suffix):
    path = _write(tmp_path / f"deep{suffix}", values.reshape(16, 16))
    with Image.open(path) as stored:
        assert stored.mode in ("I;16", "I;16B", "I")
    image = images.load_image(path, 16)
    expected = np.arange(256, dtype=np.uint8).reshape(16, 16)  # the ramp, 0 to 255
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], expected)


def test_test_images(tmp_path):
    folder = _mvtec(tmp_path)
    # TestImages resizes any mask; check_files reports one whose size differs from its image's.
    _write(folder / "ground_truth" / "broken" / "000_mask.png", _mask(64))
    files = category_files("mvtec", tmp_path, "bottle")
    dataset = TestImages(files.test, 16)
    assert dataset.images.shape == (5, 16, 16, 3) and dataset.images.dtype == np.uint8
    assert dataset.masks.shape == (5, 16, 16) and dataset.labels.tolist() == [1, 1, 1, 0, 0]
    image, mask, label = dataset[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert mask.shape == (1, 16, 16) and mask.dtype == torch.float32 and label == 1
    assert mask[0, :8, :8].eq(1).all() and mask.sum() == 64
    assert dataset[4][1].sum() == 0 and dataset[4][2] == 0


# ---- new images to score ----------------------------------------------------

def test_images_under_a_folder_any_depth_and_case(tmp_path):
    found = [_write(tmp_path / name, _noise(0)) for name in ("b.PNG", "a/c.jpg", "a/deep/d.BMP", "e.TIF")]
    (tmp_path / "notes.txt").write_text("not an image")
    _write(tmp_path / ".hidden" / "f.png", _noise(0))
    _write(tmp_path / "a" / ".g.png", _noise(0))
    assert folders.images_under(tmp_path) == sorted(found)
    assert folders.images_under(found[1]) == [found[1]]


@pytest.mark.parametrize("case, message", [
    ("missing", "{path} does not exist; give an image file or a folder of images to score."),
    ("empty", "No images (png, jpg, jpeg, bmp, tif, tiff) under {path}; give a folder"),
    ("not an image", "{path} is not an image (png, jpg, jpeg, bmp, tif, tiff);"),
])
def test_images_under_a_path_without_images_is_one_sentence(tmp_path, case, message):
    path = {"missing": tmp_path / "nowhere", "empty": tmp_path, "not an image": tmp_path / "notes.txt"}[case]
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match=re.escape(message.format(path=path))):
        folders.images_under(path)


def test_image_files_report_an_unreadable_file_and_load_the_others(tmp_path):
    good, broken = _write(tmp_path / "good.png", _noise(0)), tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    dataset = images.ImageFiles([good, broken], 16)
    index, image, pixels, problem = dataset[0]
    assert (index, problem) == (0, "") and image.shape == (3, 16, 16)
    np.testing.assert_array_equal(pixels, images.load_image(good, 16))
    index, image, pixels, problem = dataset[1]
    assert index == 1 and problem.startswith(f"Cannot read image {broken} (") and not pixels.any()


# ---- training pairs and their randomness ----------------------------------

@pytest.fixture
def train_files(tmp_path) -> list[Path]:
    return [_write(tmp_path / f"{i}.png", _noise(i, 64)) for i in range(4)]


def test_drd_pseudo_anomalies_reach_the_network_unclipped(train_files):
    """DRD pastes patch + 0.2 x destination on the [0, 1] scale, unclipped: bright pixels exceed 1."""
    dataset = TrainImages([train_files[0]] * 4, "carpet", 64, synthesis="drd")
    mean, std = torch.tensor(images.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(images.IMAGENET_STD).view(3, 1, 1)
    raw = [dataset[key][1] * std + mean for key in range(len(dataset))]  # back on the [0, 1] scale
    assert max(value.max().item() for value in raw) > 1.0
    assert min(value.min().item() for value in raw) >= -1e-6


def test_train_pairs(train_files):
    dataset = TrainImages(train_files, "carpet", 64, seed=3)
    clean, augmented = dataset[1]
    assert clean.shape == augmented.shape == (3, 64, 64)
    assert clean.dtype == augmented.dtype == torch.float32
    assert not torch.equal(clean, augmented)
    assert torch.equal(clean, images.to_tensor(dataset.images[1]))
    again = dataset[1]
    assert torch.equal(again[0], clean) and torch.equal(again[1], augmented)
    next_epoch = dataset[len(dataset) + 1]  # same image, epoch 1
    assert torch.equal(next_epoch[0], clean) and not torch.equal(next_epoch[1], augmented)
    other_seed = TrainImages(train_files, "carpet", 64, seed=4)[1]
    assert not torch.equal(other_seed[1], augmented)


def test_train_items_without_augmentation(train_files):
    unchanged = TrainImages(train_files, "carpet", 64, alpha=0.0)  # ILM on, but no image given an anomaly
    clean_only = TrainImages(train_files, "carpet", 64, augment=False)  # ILM off: the student sees the clean image
    for key in range(2 * len(unchanged)):
        clean, augmented = unchanged[key]
        assert torch.equal(clean, augmented)
        assert len(clean_only[key]) == 1 and torch.equal(clean_only[key][0], clean)


def test_note_for_category_without_constants_printed_once(train_files, capsys):
    dataset = TrainImages(train_files, "my_parts", 64)
    dataset[0], dataset[1]
    output = capsys.readouterr().out
    assert output.count("note: no NSA constants for category 'my_parts'") == 1
    TrainImages(train_files, "carpet", 64)
    assert "note" not in capsys.readouterr().out


def test_epoch_sampler():
    sampler = EpochSampler(5, seed=0)
    epochs = [list(sampler) for _ in range(3)]
    for epoch, keys in enumerate(epochs):
        epoch_of, index = zip(*(divmod(key, 5) for key in keys))
        assert set(epoch_of) == {epoch} and sorted(index) == list(range(5))
    assert len({tuple(k % 5 for k in keys) for keys in epochs}) == 3
    assert list(EpochSampler(5, seed=0, start_epoch=2)) == epochs[2]


def test_loader_batches_do_not_depend_on_workers(train_files):
    dataset = TrainImages(train_files, "carpet", 64, seed=7)

    def batches(workers: int) -> list[torch.Tensor]:
        loader = DataLoader(
            dataset, batch_size=2, sampler=EpochSampler(len(dataset), seed=7),
            num_workers=workers, worker_init_fn=images.seed_worker, persistent_workers=workers > 0,
        )
        # Two epochs through the same loader: the sampler carries the epoch.
        return [augmented for _ in range(2) for _, augmented in loader]

    single, parallel = batches(0), batches(2)
    assert len(single) == 4
    assert all(torch.equal(a, b) for a, b in zip(single, parallel))
    assert not torch.equal(single[0], single[2])


@pytest.mark.parametrize("synthesis", ["nsa", "drd"])
def test_image_level_mask_follows_alpha(synthesis):
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for seed in range(10):
        untouched = images.image_level_mask(image, "carpet", np.random.default_rng(seed), 0.0, synthesis)
        np.testing.assert_array_equal(untouched, image)
        augmented = images.image_level_mask(image, "carpet", np.random.default_rng(seed), 1.0, synthesis)
        assert not np.array_equal(augmented, image)
    changed = [not np.array_equal(images.image_level_mask(image, "carpet", np.random.default_rng(s), 0.5, synthesis), image)
               for s in range(200)]
    assert 0.4 < np.mean(changed) < 0.6
