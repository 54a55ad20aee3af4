"""MVTec AD 2: the released layout read (on the demo and on damaged copies of it), the demo in
that layout, and the benchmark's own metrics against direct computations."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from sklearn.metrics import f1_score

import main
from dataset import demo, folders
from dataset.check import check_files
from dataset.folders import category_files
from dataset.images import load_mask
from tests.helpers import read_rows
from tests.test_metrics import random_set, slow_aupro
from utils.errors import InputError
from utils.metrics import MVTEC_AD_2_FPR_LIMIT, MVTEC_AD_2_METRICS, mvtec_ad_2_metrics

URL = folders.DATASET_URLS["mvtec_ad_2"]


def test_categories_as_released():
    assert folders.DATASET_CATEGORIES["mvtec_ad_2"] == ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial",
                                                "wallplugs", "walnuts")


@pytest.mark.parametrize("category", demo.DEMO_CATEGORIES)
def test_reads_every_split_of_the_release(mvtec_ad_2_dir, category):
    assert folders.list_categories("mvtec_ad_2", mvtec_ad_2_dir) == tuple(sorted(demo.DEMO_CATEGORIES))
    files = category_files("mvtec_ad_2", mvtec_ad_2_dir, category)
    folder = mvtec_ad_2_dir / category
    assert files.train == [folder / "train" / "good" / f"{i:03d}_regular.png" for i in range(10)]
    assert files.validation == [folder / "validation" / "good" / f"{i:03d}_regular.png" for i in range(4)]
    # test = test_public: anomalous ("bad") first, each with its mask, then the normal images.
    assert [(s.defect, s.image.name, s.label) for s in files.test] == (
        [("bad", f"{i:03d}_regular.png", 1) for i in range(4)]
        + [("good", f"{i:03d}_regular.png", 0) for i in range(4)])
    for sample in files.test[:4]:
        assert sample.mask == folder / "test_public" / "ground_truth" / "bad" / f"{sample.image.stem}_mask.png"
        assert sample.image.parent == folder / "test_public" / "bad"
    assert files.private == {"test_private": [folder / "test_private" / f"{i:03d}_regular.png" for i in range(4)],
                             "test_private_mixed": [folder / "test_private_mixed" / f"{i:03d}_mixed.png"
                                                    for i in range(4)]}
    check_files({category: files})  # every image, validation and private ones too, decodes


@pytest.mark.parametrize("category", demo.DEMO_CATEGORIES)
def test_demo_masks_are_non_square_and_on_the_defects(mvtec_ad_2_dir, category):
    files = category_files("mvtec_ad_2", mvtec_ad_2_dir, category)
    for sample in files.test:
        assert Image.open(sample.image).size == (128, 96)
        if sample.label == 1:
            mask = load_mask(sample.mask, 32)
            assert mask.any() and not mask.all()
            assert set(np.unique(np.asarray(Image.open(sample.mask)))) == {0, 255}


def test_demo_is_deterministic_and_written_once(mvtec_ad_2_dir, tmp_path):
    image = mvtec_ad_2_dir / "demo_texture" / "test_private_mixed" / "001_mixed.png"
    before = image.stat().st_mtime_ns
    assert demo.make_demo_mvtec_ad_2(mvtec_ad_2_dir) == demo.DEMO_CATEGORIES
    assert image.stat().st_mtime_ns == before
    demo.make_demo_mvtec_ad_2(tmp_path)
    assert (tmp_path / "demo_texture" / "test_private_mixed" / "001_mixed.png").read_bytes() == image.read_bytes()
    # A defective private image (every other one) differs from a normal one.
    normal = np.asarray(Image.open(image.with_name("000_mixed.png")), dtype=int)
    assert np.abs(np.asarray(Image.open(image), dtype=int) - normal).max() > 40


def _copy(mvtec_ad_2_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(mvtec_ad_2_dir / "demo_object", tmp_path / "demo_object")
    return tmp_path / "demo_object"


FOLDERS = ("train/good", "validation/good", "test_public/good", "test_public/bad", "test_private",
           "test_private_mixed")


@pytest.mark.parametrize("missing", FOLDERS)
def test_a_missing_folder_is_one_sentence_with_the_download_page(mvtec_ad_2_dir, tmp_path, missing):
    folder = _copy(mvtec_ad_2_dir, tmp_path)
    shutil.rmtree(folder / missing)
    with pytest.raises(InputError) as error:
        category_files("mvtec_ad_2", tmp_path, "demo_object")
    assert str(error.value) == (f"MVTec AD 2 folder {folder / missing} does not exist; restore it from the release"
                                f" at {URL}.")


def test_every_missing_or_empty_folder_is_listed_at_once(mvtec_ad_2_dir, tmp_path):
    folder = _copy(mvtec_ad_2_dir, tmp_path)
    shutil.rmtree(folder / "validation")
    for image in (folder / "test_private_mixed").iterdir():
        image.unlink()
    with pytest.raises(InputError) as error:
        category_files("mvtec_ad_2", tmp_path, "demo_object")
    assert str(error.value).splitlines() == [
        f"2 folders of {folder} are missing or empty; restore each:",
        f"  MVTec AD 2 folder {folder / 'validation' / 'good'} does not exist; restore it from the release at {URL}.",
        f"  MVTec AD 2 folder {folder / 'test_private_mixed'} holds no images; restore it from the release at {URL}.",
    ]


def test_a_missing_mask_is_named(mvtec_ad_2_dir, tmp_path):
    folder = _copy(mvtec_ad_2_dir, tmp_path)
    (folder / "test_public" / "ground_truth" / "bad" / "002_regular_mask.png").unlink()
    with pytest.raises(InputError, match=r"Defect image .*002_regular.png has no ground-truth mask; expected"
                                         r" 002_regular_mask.<png\|jpg\|jpeg\|bmp\|tif\|tiff> in .*ground_truth/bad"):
        category_files("mvtec_ad_2", tmp_path, "demo_object")


def test_a_missing_dataset_names_the_layout_and_download_page(tmp_path):
    with pytest.raises(InputError, match=f"expected the layout .*test_private_mixed.* published at {URL}"):
        category_files("mvtec_ad_2", tmp_path / "nowhere", "can")
    with pytest.raises(InputError, match="Category 'can' not found"):
        category_files("mvtec_ad_2", tmp_path, "can")


# ---- the benchmark's metrics -------------------------------------------------------------

@pytest.mark.parametrize("seed", [2, 3, 4])
def test_mvtec_ad_2_metrics_match_direct_computations(seed):
    masks, maps = random_set(seed)
    threshold = float(np.median(maps))
    values = mvtec_ad_2_metrics(masks, maps, threshold)
    assert tuple(values) == MVTEC_AD_2_METRICS
    assert MVTEC_AD_2_FPR_LIMIT == 0.05
    assert values["aupro_005"] == pytest.approx(slow_aupro(masks, maps, 0.05), abs=1e-9)
    # SegF1: one F1 over every pixel of the set, scikit-learn's on the binarized maps.
    assert values["seg_f1"] == pytest.approx(f1_score(masks.ravel(), maps.ravel() >= threshold), abs=1e-12)


def test_seg_f1_hand_case():
    masks = np.zeros((2, 2, 3), dtype=bool)
    masks[0, 0, :2] = True                  # 2 anomalous pixels, both in image 0
    maps = np.zeros((2, 2, 3))
    maps[0, 0, 0] = maps[1, 1, 1] = 1.0     # one hit, one false alarm in the good image; one miss
    # TP 1, FP 1, FN 1: F1 = 2 / (2 + 1 + 1).
    assert mvtec_ad_2_metrics(masks, maps, 0.5)["seg_f1"] == 0.5
    assert mvtec_ad_2_metrics(masks, maps, 2.0)["seg_f1"] == 0.0


def test_a_demo_in_mvtec_ad_2s_layout_trains_evaluates_and_writes_the_submission(tmp_path, demo_args, capsys):
    assert main.main(demo_args("--dataset=mvtec_ad_2", f"--data_dir={tmp_path}/ad2", "--categories=demo_object")) == 0
    run = tmp_path / "results" / "demo"
    row = read_rows(run / "metrics.csv")[0]
    # Its threshold is chosen on the validation images by default; every rule's F1 is reported beside it.
    assert row["threshold_rule"] == "normal" and float(row["threshold"]) == float(row["threshold_normal"])
    assert all(0 <= float(row[f"f1_{rule}"]) <= 1 for rule in ("f1_test", "normal", "normal_mean_3std"))
    assert 0 <= float(row["aupro_005"]) <= 1 and 0 <= float(row["seg_f1"]) <= 1
    table = (run / "metrics.md").read_text()
    assert "| aupro_005 | seg_f1 |" in table and "chosen on normal images (above their highest score)" in table
    files = category_files("mvtec_ad_2", tmp_path / "ad2", "demo_object")
    for split, images in files.private.items():
        maps = sorted((run / "submission" / "anomaly_images" / "demo_object" / split).iterdir())
        binary = sorted((run / "submission" / "anomaly_images_thresholded" / "demo_object" / split).iterdir())
        assert [path.stem for path in maps] == [path.stem for path in binary] == sorted(path.stem for path in images)
        assert tifffile.imread(maps[0]).dtype == np.float16
        assert set(np.unique(np.asarray(Image.open(binary[0])))) <= {0, 255}
    # Evaluating again, or resuming the finished run (which evaluates it again), replaces this run's
    # own submission of the category.
    for again in ("--eval_only=True", "--resume=True"):
        assert main.main(demo_args("--dataset=mvtec_ad_2", f"--data_dir={tmp_path}/ad2", "--categories=demo_object",
                                   again)) == 0
