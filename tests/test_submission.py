"""The MVTec AD 2 submission writer: files read back as MVTec's checker reads them (tifffile for the
float16 maps, Pillow for the binary PNGs), at the images' own size; refusals change nothing."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from dataset.folders import MVTEC_AD_2_CATEGORIES, MVTEC_AD_2_PRIVATE, category_files
from utils.errors import InputError
from utils.submission import BINARY_MAPS, MAPS, missing_parts, write_category

SIZE = 32  # side of the maps, as the network's IMAGE_SIZE would give them


@pytest.fixture
def private(mvtec_ad_2_dir):
    """The demo's private images of demo_object, split -> paths."""
    return category_files("mvtec_ad_2", mvtec_ad_2_dir, "demo_object").private


def _maps(private, seed=0):
    rng = np.random.default_rng(seed)
    return {split: rng.random((len(images), SIZE, SIZE)).astype(np.float32) for split, images in private.items()}


def _tree(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_writes_float16_maps_and_binary_pngs_at_the_image_size(private, tmp_path):
    maps, threshold = _maps(private), 0.5
    written = write_category(tmp_path, "demo_object", private, maps, threshold)
    assert len(written) == 2 * sum(len(images) for images in private.values())
    for split, images in private.items():
        names = sorted(path.name for path in (tmp_path / MAPS / "demo_object" / split).iterdir())
        assert names == [image.stem + ".tiff" for image in images]  # 000_regular.tiff ... 003_mixed.tiff
        for image, anomaly_map in zip(images, maps[split]):
            stored = tifffile.imread(tmp_path / MAPS / "demo_object" / split / f"{image.stem}.tiff")
            assert stored.dtype == np.float16 and stored.shape == (96, 128)  # the 128x96 image's own size
            expected = np.asarray(Image.fromarray(anomaly_map).resize((128, 96), Image.BILINEAR))
            np.testing.assert_allclose(stored, expected, atol=2e-3)  # float16 keeps 11 significant bits
            binary = Image.open(tmp_path / BINARY_MAPS / "demo_object" / split / f"{image.stem}.png")
            assert binary.mode == "L" and binary.size == (128, 96)
            values = np.asarray(binary)
            assert set(np.unique(values)) <= {0, 255}
            np.testing.assert_array_equal(values == 255, expected >= threshold)


def test_maps_are_stretched_back_not_transposed(private, tmp_path):
    # A map rising left to right and high in its top quarter: so must the written one be.
    columns = np.tile(np.linspace(0.0, 1.0, SIZE, dtype=np.float32), (SIZE, 1))
    columns[: SIZE // 4] += 10.0
    maps = {split: np.stack([columns] * len(images)) for split, images in private.items()}
    write_category(tmp_path, "demo_object", private, maps, threshold=5.0)
    stored = tifffile.imread(tmp_path / MAPS / "demo_object" / "test_private" / "000_regular.tiff").astype(float)
    assert (np.diff(stored[40]) >= 0).all() and stored[40, -1] - stored[40, 0] > 0.9
    binary = np.asarray(Image.open(tmp_path / BINARY_MAPS / "demo_object" / "test_private" / "000_regular.png"))
    assert binary[:20].all() and not binary[30:].any()  # the top quarter of 96 rows


def test_an_existing_category_folder_is_refused_and_nothing_changes(private, tmp_path):
    write_category(tmp_path, "demo_object", private, _maps(private), 0.5)
    before = _tree(tmp_path)
    with pytest.raises(InputError) as error:
        write_category(tmp_path, "demo_object", private, _maps(private, seed=1), 0.5)
    assert str(error.value) == (f"Submission folder {tmp_path / MAPS / 'demo_object'} already exists; remove it or"
                                " write the submission into another folder.")
    assert _tree(tmp_path) == before
    # Either half of a category is enough to refuse, and the other half is not created.
    (tmp_path / "other" / BINARY_MAPS / "demo_object").mkdir(parents=True)
    with pytest.raises(InputError, match=f"{BINARY_MAPS}/demo_object already exists"):
        write_category(tmp_path / "other", "demo_object", private, _maps(private), 0.5)
    assert not (tmp_path / "other" / MAPS).exists()
    # Another category goes beside the first.
    write_category(tmp_path, "demo_texture", private, _maps(private), 0.5)


@pytest.mark.parametrize("damage, message", [
    (lambda maps: maps["test_private"][:-1], r"maps of test_private must have shape \(4, S, S\)"),
    (lambda maps: np.where(maps["test_private"] > 0.9, np.nan, maps["test_private"]), "must be finite"),
    (lambda maps: maps["test_private"] * 1e6, "within float16's range"),
])
def test_bad_maps_are_refused_before_writing(private, tmp_path, damage, message):
    maps = _maps(private)
    maps["test_private"] = damage(maps)
    with pytest.raises(ValueError, match=message):
        write_category(tmp_path, "demo_object", private, maps, 0.5)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="same splits"):
        write_category(tmp_path, "demo_object", private, {"test_private": maps["test_private"]}, 0.5)


def test_missing_parts_lists_what_the_server_still_expects(private, tmp_path):
    expected = [f"{category}/{split}" for category in MVTEC_AD_2_CATEGORIES for split in MVTEC_AD_2_PRIVATE]
    assert missing_parts(tmp_path) == expected
    write_category(tmp_path, "can", private, _maps(private), 0.5)  # the demo's images standing in for can's
    assert missing_parts(tmp_path) == expected[2:]
