"""The synthetic demo dataset: deterministic, idempotent, small, loadable, exact masks; also in VisA's layout."""

from pathlib import Path

import numpy as np
import pytest

from dataset import demo
from dataset.folders import category_files
from dataset.images import TestImages, load_mask


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    assert demo.make_demo_dataset(root) == demo.DEMO_CATEGORIES
    return root


def _files(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_small_and_regenerated_for_another_seed(demo_root, tmp_path):
    demo.make_demo_dataset(tmp_path)
    first, second = _files(demo_root), _files(tmp_path)
    assert first == second
    assert sum(len(data) for data in first.values()) < 5_000_000
    demo.make_demo_dataset(tmp_path, seed=1)  # the same folder: drawn again
    other = _files(tmp_path)
    assert other.keys() == first.keys() and other != first
    assert other[Path("demo_object/test/good/000.png")] != first[Path("demo_object/test/good/000.png")]
    assert (tmp_path / demo.MARKER).read_text() == f"{demo.DEMO_VERSION} seed=1\n"


def test_idempotent(demo_root):
    image = demo_root / "demo_texture" / "train" / "good" / "000.png"
    before = image.stat().st_mtime_ns
    demo.make_demo_dataset(demo_root)
    assert image.stat().st_mtime_ns == before


@pytest.mark.parametrize("category", demo.DEMO_CATEGORIES)
def test_loads_with_masks_exactly_on_defects(demo_root, category):
    files = category_files("mvtec", demo_root, category)
    assert len(files.train) == demo.N_TRAIN
    defects = [s.defect for s in files.test if s.label == 1]
    assert sorted(set(defects)) == sorted(demo.DEFECTS)
    assert len(defects) == len(demo.DEFECTS) * demo.N_PER_DEFECT
    assert len(files.test) - len(defects) == demo.N_TEST_GOOD
    dataset = TestImages(files.test, demo.SIZE)
    assert (dataset.masks.any(axis=(1, 2)) == (dataset.labels == 1)).all()


@pytest.mark.parametrize("category", demo.DEMO_CATEGORIES)
@pytest.mark.parametrize("defect", demo.DEFECTS)
def test_mask_is_the_changed_pixels(category, defect):
    for i in range(3):
        sample = demo.make_sample(category, defect, np.random.default_rng([5, i]))
        changed = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=-1)
        assert (sample.mask == (changed > 0)).all()
        # Large and of high contrast, as the demo promises.
        assert sample.mask.mean() > 0.003
        assert np.median(changed[sample.mask]) > 40


@pytest.mark.parametrize("category", demo.DEMO_CATEGORIES)
def test_normal_sample_is_unchanged(category):
    sample = demo.make_sample(category, None, np.random.default_rng(0))
    assert not sample.mask.any() and (sample.image == sample.clean).all()


@pytest.mark.parametrize("category", demo.DEMO_CATEGORIES)
def test_visa_layout_holds_the_same_images_and_masks(demo_root, visa_dir, category):
    files = category_files("visa", visa_dir, category)
    mvtec = category_files("mvtec", demo_root, category)
    assert len(files.train) == demo.N_TRAIN and len(files.test) == len(mvtec.test)
    assert all(path.suffix == ".JPG" for path in files.train + [sample.image for sample in files.test])
    # The anomalous images, in the order drawn (defect by defect), against the MVTec layout's masks.
    anomalous = [sample for sample in files.test if sample.label == 1]
    drawn = [sample for defect in demo.DEFECTS for sample in mvtec.test if sample.defect == defect]
    assert len(anomalous) == len(drawn) == len(demo.DEFECTS) * demo.N_PER_DEFECT
    for visa_sample, mvtec_sample in zip(anomalous, drawn):
        np.testing.assert_array_equal(load_mask(visa_sample.mask, demo.SIZE, numbered=True),
                                      load_mask(mvtec_sample.mask, demo.SIZE))
    assert demo.make_demo_visa(visa_dir) == demo.DEMO_CATEGORIES  # already there: nothing rewritten
