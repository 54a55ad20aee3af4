"""Tests of utils/metrics.py: hand-computed cases and slow direct implementations, on CPU."""
from fractions import Fraction

import numpy as np
import pytest
from skimage import measure
from sklearn.metrics import auc, roc_auc_score

from utils.metrics import aupro, aupro_per_image, f1_threshold, image_auroc, normalized_scores, pixel_auroc


def random_set(seed: int, n_images: int = 6, size: int = 10,
               levels: int | None = 12) -> tuple[np.ndarray, np.ndarray]:
    """Masks (N, size, size) with rectangles and scattered pixels (so diagonal contacts occur),
    the last image good; maps scoring anomalies higher on average, quantised to `levels`
    values so that ties occur (continuous when levels is None)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=bool)
    for mask in masks[:-1]:
        if rng.random() < 0.25:
            continue  # a good image
        for _ in range(rng.integers(1, 3)):
            top, left = rng.integers(0, size - 2, 2)
            height, width = rng.integers(1, 4, 2)
            mask[top:top + height, left:left + width] = True
        mask |= rng.random((size, size)) < 0.08
    masks[0, 0, 0] = True  # at least one anomalous pixel in every set
    maps = rng.random(masks.shape) + 0.6 * masks * rng.random(masks.shape)
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return masks, maps


def slow_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Standard AU-PRO straight from the definition: every distinct score as a threshold."""
    regions = [(i, labels == k)
               for i, mask in enumerate(masks)
               for labels in [measure.label(mask, connectivity=2)]
               for k in range(1, labels.max() + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        fpr = (predicted & normal).sum() / normal.sum()
        pro = np.mean([predicted[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def slow_aupro_per_image(masks: np.ndarray, maps: np.ndarray) -> float:
    """The authors' per-image loop: binarise at each of 200 thresholds, regionprops,
    keep FPR < 0.3, rescale, sklearn.metrics.auc."""
    areas = []
    for mask, amap in zip(masks, maps):
        if not mask.any():
            continue
        props = measure.regionprops(measure.label(mask))
        delta = (amap.max() - amap.min()) / 200
        fprs, pros = [], []
        for k in range(200):
            binary = amap > amap.min() + delta * k
            pros.append(np.mean([binary[p.coords[:, 0], p.coords[:, 1]].sum() / p.area for p in props]))
            fprs.append((binary & ~mask).sum() / (~mask).sum())
        fprs, pros = np.array(fprs), np.array(pros)
        kept = fprs < 0.3
        areas.append(auc(fprs[kept] / fprs[kept].max(), pros[kept]))
    return float(np.mean(areas))


def test_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    scores = rng.integers(0, 6, 50) + labels  # few distinct values: many ties
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    masks = rng.random((4, 9, 7)) < 0.2
    maps = np.round(rng.random((4, 9, 7)) * 5 + masks) / 5
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="both anomalous and normal"):
        image_auroc(np.zeros(5, dtype=int), np.arange(5.0))
    with pytest.raises(ValueError, match="both anomalous and normal"):
        pixel_auroc(np.zeros((2, 3, 3), dtype=bool), np.ones((2, 3, 3)))


def test_aupro_perfect_constant_and_inverted_maps():
    masks, _ = random_set(1)
    perfect = masks.astype(float)
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    # The constant map is one threshold: the curve jumps from (0, 0) to (1, 1),
    # so the area up to 0.3 is 0.3 * 0.3 / 2 and the normalised value 0.15.
    assert aupro(masks, np.full(masks.shape, 0.7)) == pytest.approx(0.15, abs=1e-12)
    assert aupro(masks, np.full(masks.shape, 0.7), fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)
    assert aupro(masks, 1.0 - perfect) == 0.0


def test_aupro_two_regions_of_different_size_with_ties():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = True          # region a: 1 pixel
    masks[0, 2:, 2:] = True        # region b: 4 pixels; image 1 is good; 11 + 16 = 27 normal pixels
    maps = np.full((2, 4, 4), 0.1)
    maps[0, 0, 1:] = 0.5           # 3 + 2 normal pixels of image 0 at 0.5 ...
    maps[0, 1, :2] = 0.5
    maps[1] = 0.5                  # ... and 15 of the good image: 20 in all
    maps[1, 0, 0] = 0.8            # one normal pixel above region a
    maps[0, 0, 0] = 0.6            # region a
    maps[0, 2, 2:] = 0.9           # half of region b first ...
    maps[0, 3, 2:] = 0.5           # ... the other half tied with the 20 normals
    # Curve (FPR, PRO): (0, 0) -> 0.9: (0, 1/4) -> 0.8: (1/27, 1/4) -> 0.6: (1/27, 3/4)
    # -> 0.5: (21/27, 1) -> 0.1: (1, 1). The tie makes the segment into (21/27, 1) a diagonal,
    # cut at FPR 0.3 by linear interpolation.
    limit, first_fp = Fraction(3, 10), Fraction(1, 27)
    pro_at_limit = Fraction(3, 4) + Fraction(1, 4) * (limit - first_fp) / Fraction(20, 27)
    expected = (first_fp * Fraction(1, 4) + (limit - first_fp) * (Fraction(3, 4) + pro_at_limit) / 2) / limit
    assert aupro(masks, maps) == pytest.approx(float(expected), rel=1e-12)


def test_aupro_diagonal_contact_is_one_region():
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = True  # (0, 0) touches (1, 1) only at a corner
    maps = np.full((1, 4, 4), 0.5)
    maps[0, 0, 0] = 1.0
    maps[0, 1, 1:3] = 0.0
    # 8-connected: one region of 3 pixels, PRO 1/3 from FPR 0 up to FPR 1 -> 1/3.
    # 4-connected would be regions of 1 and 2 pixels, PRO (1 + 0) / 2 -> 1/2.
    assert aupro(masks, maps) == pytest.approx(1 / 3, abs=1e-12)


@pytest.mark.parametrize("seed", [2, 3, 4, 5])
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 0.7, 1.0])
def test_aupro_matches_slow_definition(seed, fpr_limit):
    masks, maps = random_set(seed)
    assert aupro(masks, maps, fpr_limit) == pytest.approx(slow_aupro(masks, maps, fpr_limit), abs=1e-9)


def test_aupro_float32_maps_match_slow_definition():
    masks, maps = random_set(6, levels=None)
    maps = maps.astype(np.float32)
    assert aupro(masks, maps) == pytest.approx(slow_aupro(masks, maps, 0.3), abs=1e-9)


def test_aupro_errors():
    maps = np.random.default_rng(0).random((2, 3, 3))
    with pytest.raises(ValueError, match="at least one anomalous pixel"):
        aupro(np.zeros((2, 3, 3), dtype=bool), maps)
    with pytest.raises(ValueError, match="at least one normal pixel"):
        aupro(np.ones((2, 3, 3), dtype=bool), maps)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(np.eye(3, dtype=bool)[None], maps[:1], fpr_limit=0.0)
    with pytest.raises(ValueError, match="shape"):
        aupro(np.eye(3, dtype=bool), maps[0])


def test_aupro_per_image_perfect_map_and_hand_case():
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0, :2, :2] = True
    masks[1, 1:3, 1:3] = True
    # Image 0: every threshold lies in [0, 1) and gives FPR 0, PRO 1; the authors' rescaling is
    # 0 / 0 there, which this implementation scores as that PRO, 1.
    maps = masks.astype(float)
    assert aupro_per_image(masks[:1], maps[:1]) == 1.0
    # Same degenerate curve with PRO 1 below threshold 0.5 and 1/2 from it: scored at the lowest threshold, 1.
    uneven = maps.copy()
    uneven[0, 1, :2] = 0.5
    assert aupro_per_image(masks[:1], uneven[:1]) == 1.0
    # A constant map predicts nothing at its one threshold: FPR 0 and PRO 0, scored 0.
    assert aupro_per_image(masks[:1], np.full((1, 4, 4), 0.3)) == 0.0
    # Image 1: region pixels at 1, 1, 0.5, 0.5; one normal pixel at 0.75, the other 11 at 0.
    # Thresholds k / 200: below 0.5 (FPR 1/12, PRO 1), in [0.5, 0.75) (FPR 1/12, PRO 1/2),
    # from 0.75 (FPR 0, PRO 1/2). All kept; rescaled FPR is 0 or 1 and PRO is 1/2 between: area 1/2.
    maps[1, 1, 1:3] = 1.0
    maps[1, 2, 1:3] = 0.5
    maps[1, 0, 3] = 0.75
    assert aupro_per_image(masks[1:2], maps[1:2]) == pytest.approx(0.5, abs=1e-12)
    # Image 2 is good and skipped, whatever its map: the mean is over images 0 and 1.
    maps[2] = np.random.default_rng(0).random((4, 4))
    assert aupro_per_image(masks, maps) == pytest.approx(0.75, abs=1e-12)


def test_aupro_per_image_ignores_false_positives_in_good_images():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2, :2] = True
    maps = masks.astype(float)
    maps[1] = 2.0  # the good image outscores every anomaly
    # Standard: the good image's 16 of the 28 normal pixels come first, FPR 16/28 > 0.3 before any PRO.
    assert aupro(masks, maps) == 0.0
    assert aupro_per_image(masks, maps) == 1.0


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_aupro_per_image_matches_authors_loop(seed):
    masks, maps = random_set(seed, size=16, levels=None)
    assert aupro_per_image(masks, maps) == pytest.approx(slow_aupro_per_image(masks, maps), abs=1e-12)


def test_aupro_per_image_binarises_strictly_above_threshold():
    # The image spans [0, 200/128], so thresholds are exactly k/128, k = 0..199, and scores can equal them.
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, :2] = True                            # one region of 2 pixels; 14 normal pixels
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 200 / 128                         # anomalous, the maximum
    maps[0, 0, 1] = 50 / 128                          # anomalous
    maps[0, 1, 0] = 199 / 128                         # normal, equal to the top threshold
    maps[0, 1, 1] = 100 / 128                         # normal
    # score > t: k = 199 (0, 1/2); k = 100..198 (1/14, 1/2); k = 50..99 (2/14, 1/2); k < 50 (2/14, 1).
    # FPR rescaled by 2/14: (0, 1/2) -> (1/2, 1/2) -> (1, 1/2) -> (1, 1), area 1/2.
    # Binarising with score >= t would drop the first point and give 1/4.
    assert aupro_per_image(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_aupro_per_image_needs_an_anomalous_image():
    with pytest.raises(ValueError, match="at least one image with anomalous pixels"):
        aupro_per_image(np.zeros((2, 3, 3), dtype=bool), np.ones((2, 3, 3)))


def brute_force_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Every distinct score as the threshold, F1 from the confusion counts; of equal F1 the highest."""
    best = None
    for threshold in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= threshold
        tp = int((predicted & (labels == 1)).sum())
        fp = int((predicted & (labels == 0)).sum())
        fn = int((~predicted & (labels == 1)).sum())
        f1 = Fraction(2 * tp, 2 * tp + fp + fn)
        if best is None or f1 > best[0]:
            best = (f1, threshold)
    return best[1]


@pytest.mark.parametrize("seed", range(6))
def test_f1_threshold_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    labels[0] = 1
    scores = np.round(rng.random(40) + 0.4 * labels, 1)  # few distinct values: many ties
    assert f1_threshold(labels, scores) == brute_force_f1_threshold(labels, scores)


def test_f1_threshold_hand_cases():
    # Separable: the lowest anomalous score. Equal F1 at 0.9 and 0.1 (2/3 each): the higher is kept.
    assert f1_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.6, 0.9])) == 0.6
    assert f1_threshold(np.array([1, 0, 0, 1]), np.array([0.9, 0.5, 0.3, 0.1])) == 0.9
    with pytest.raises(ValueError, match="at least one anomalous"):
        f1_threshold(np.zeros(3, dtype=int), np.arange(3.0))


def test_normalized_scores_put_the_threshold_at_one_half():
    scores = np.array([-1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 9.0])
    normalized = normalized_scores(scores, threshold=3.0, low=1.0, high=5.0)
    np.testing.assert_allclose(normalized, [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert ((normalized >= 0.5) == (scores >= 3.0)).all()
    # A threshold at an end of the test scores: beyond it, the end's value.
    np.testing.assert_allclose(normalized_scores(scores, 1.0, 1.0, 5.0), [0, 0.5, 0.625, 0.75, 0.875, 1, 1])
    np.testing.assert_allclose(normalized_scores(scores, 5.0, 1.0, 5.0), [0, 0, 0.125, 0.25, 0.375, 0.5, 1])
