"""Evaluation metrics for one category's test set, as pure NumPy functions.

All functions take NumPy arrays: image labels and scores of shape (N,), ground-truth
masks (N, H, W) of bool or {0, 1}, anomaly maps (N, H, W) of floats.

- `image_auroc`, `pixel_auroc`: AU-ROC over images and over all pixels of the set
  (equal to sklearn.metrics.roc_auc_score, computed by sorting instead).
- `aupro`: the standard AU-PRO of the MVTec AD benchmark (Bergmann et al.): one PRO
  curve over the whole test set, integrated up to an FPR of 0.3 and divided by 0.3.
  Report this one.
- `aupro_per_image`: the authors' variant from the MRKD release, averaged over
  anomalous images with its FPR axis rescaled per image. It is not the standard
  metric and reads higher; it exists only to compare like with like with the
  authors' published numbers.
- `f1_threshold`: the image-score threshold that decides "anomalous" for new images, and
  `normalized_scores`, which puts it at 0.5 on a [0, 1] scale.
- `decision_thresholds`: every rule of THRESHOLD_RULES, two of which never see a test label
  (`normal_threshold`, `mean_std_threshold` on normal images that neither training nor testing
  uses), and `f1_at`, the F1, precision and recall any threshold gives on the test set.
- `mvtec_ad_2_metrics`: MVTec AD 2's own ranking metrics, AU-PRO up to an FPR of 0.05 and SegF1.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

# The metric names used in code, printed lines, CSV headers and the README.
METRICS = ("image_auroc", "pixel_auroc", "aupro", "aupro_per_image")

# Both constants belong to the authors' per-image AU-PRO (authors' implementation).
PER_IMAGE_THRESHOLDS = 200  # equal-width thresholds between an image's min and max score
PER_IMAGE_FPR_LIMIT = 0.3   # curve points with FPR below this are kept


def evaluate(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    """The four metrics of METRICS for one category's test set, as fractions.

    labels (N,), 1 is anomalous; scores (N,) image scores; masks (N, H, W) ground truth;
    maps (N, H, W) anomaly maps.
    """
    # The pixel metrics each sort millions of scores; NumPy releases the GIL while it sorts,
    # so threads run them side by side.
    with ThreadPoolExecutor(3) as pool:
        pixel = pool.submit(pixel_auroc, masks, maps)
        pro = pool.submit(aupro, masks, maps)
        pro_per_image = pool.submit(aupro_per_image, masks, maps)
        return {"image_auroc": image_auroc(labels, scores), "pixel_auroc": pixel.result(),
                "aupro": pro.result(), "aupro_per_image": pro_per_image.result()}


def selection_merit(values: dict[str, float]) -> float:
    """What SELECT=best_on_test maximises over a training's evaluations on the test set: the mean of
    image AU-ROC, pixel AU-ROC and per-image AU-PRO, as RD++'s release picks its best epoch
    (DRD's release picks by image and pixel AU-ROC)."""
    return (values["image_auroc"] + values["pixel_auroc"] + values["aupro_per_image"]) / 3


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AU-ROC of image scores: labels (N,) in {0, 1}, 1 is anomalous; scores (N,)."""
    labels = np.asarray(labels)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("image labels must be 0 (good) or 1 (anomalous).")
    return _auroc(labels.astype(bool), np.asarray(scores))


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The image-score threshold t maximising F1 on a test set: labels (N,) in {0, 1}, scores (N,).

    An image is predicted anomalous when its score >= t; every distinct score is a
    candidate, and of equal F1 the highest t is kept (fewer false alarms for the same F1).
    F1 = 2 TP / (2 TP + FP + FN), anomalous being the positive class.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isin(labels, (0, 1)).all() or not labels.any():
        raise ValueError("f1_threshold needs labels of 0 (good) and 1 (anomalous), at least one anomalous.")
    order = np.argsort(scores)[::-1]                                          # descending score
    sorted_scores, positives = scores[order], labels[order].astype(np.int64)
    # Ties are one threshold: each distinct score closes at the last image of its run.
    run_ends = np.append(np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), scores.size - 1)
    tp = np.cumsum(positives)[run_ends]                                       # (T,) at or above each threshold
    fp = run_ends + 1 - tp
    fn = positives.sum() - tp
    f1 = 2 * tp / (2 * tp + fp + fn)
    return float(sorted_scores[run_ends][np.argmax(f1)])  # argmax: the first, i.e. highest, of equal F1


def normalized_scores(scores: np.ndarray, threshold: float, low: float, high: float) -> np.ndarray:
    """Scores (N,) on [0, 1]: `low` -> 0, `threshold` -> 0.5, `high` -> 1, linear in between, clipped.

    low and high are the lowest and highest test-set scores, so that a normalized score
    >= 0.5 means anomalous whatever the method's score scale. Where the threshold equals
    low (or high), scores beyond it map to 0 (or 1).
    """
    scores = np.asarray(scores, dtype=np.float64)
    below = 0.5 * (scores - low) / (threshold - low) if threshold > low else np.zeros_like(scores)
    above = (0.5 + 0.5 * (scores - threshold) / (high - threshold) if high > threshold
             else np.where(scores > threshold, 1.0, 0.5))
    return np.clip(np.where(scores < threshold, below, above), 0.0, 1.0)


# Rules that choose a decision threshold t, by the label metrics.csv gives each; a score >= t is
# anomalous. Only f1_test sees test labels, so only the other two are fit to report as a method's
# working point; f1_test shows what the best possible threshold would give.
#   f1_test           f1_threshold on the test set: the F1-best t.
#   normal            normal_threshold: just above the highest score of normal images that neither
#                     training nor testing uses (CategoryFiles.validation).
#   normal_mean_3std  mean_std_threshold of the same scores: their mean + NORMAL_STDS standard
#                     deviations, the baseline MVTec suggests for binarizing MVTec AD 2's maps
#                     (check_and_prepare_data_for_upload.py of its public code).
THRESHOLD_RULES = ("f1_test", "normal", "normal_mean_3std")
# How each rule is named wherever its threshold is used (metrics.md, --predict's CSV and overlays, the export).
RULE_LABELS = {"f1_test": "chosen on the test set (F1-best)",
               "normal": "chosen on normal images (above their highest score)",
               "normal_mean_3std": "chosen on normal images (their mean + 3 std)"}
NORMAL_STDS = 3.0


def decision_thresholds(labels: np.ndarray, scores: np.ndarray, normal_scores: np.ndarray | None
                        ) -> dict[str, float]:
    """The threshold of every rule of THRESHOLD_RULES that the data allows: labels (N,) and scores
    (N,) of the test set, normal_scores (M,) of normal images that neither training nor testing
    uses (None where there are none: f1_test alone)."""
    thresholds = {"f1_test": f1_threshold(labels, scores)}
    if normal_scores is not None:
        thresholds.update(normal=normal_threshold(normal_scores), normal_mean_3std=mean_std_threshold(normal_scores))
    return thresholds


def normal_threshold(normal_scores: np.ndarray) -> float:
    """The next float above the highest of `normal_scores` (any shape), so that every one of them
    falls below it: no normal image (or pixel) it is computed on is called anomalous. The step is
    one of the scores' own precision: NumPy compares float32 scores with a Python float in float32,
    where the next float64 would round back to the maximum.

    The maximum rather than a quantile: the normal images held back for it are few (tens in
    MVTec AD 2's validation sets, 6 to 40 for a tenth of MVTec AD's training images), and a
    quantile q < 1 of so few scores is set by the top one or two of them anyway, at the price of a
    parameter; the maximum is the strictest rule that raises no false alarm on images known to be
    normal.
    """
    normal_scores = np.asarray(normal_scores)
    if not np.issubdtype(normal_scores.dtype, np.floating):
        normal_scores = normal_scores.astype(np.float64)
    if normal_scores.size == 0 or not np.isfinite(normal_scores).all():
        raise ValueError("normal_threshold needs at least one score, all finite.")
    return float(np.nextafter(normal_scores.max(), normal_scores.dtype.type(np.inf)))


def mean_std_threshold(normal_scores: np.ndarray, stds: float = NORMAL_STDS) -> float:
    """mean + stds x standard deviation (NumPy's, ddof=0) of `normal_scores` (any shape)."""
    normal_scores = np.asarray(normal_scores, dtype=np.float64)
    if normal_scores.size == 0 or not np.isfinite(normal_scores).all():
        raise ValueError("mean_std_threshold needs at least one score, all finite.")
    return float(normal_scores.mean() + stds * normal_scores.std())


def f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """F1, precision and recall when a score >= threshold is called anomalous.

    labels: any shape, nonzero is anomalous (image labels (N,), or masks (N, H, W) for pixels);
    scores: the same shape. F1 = 2 TP / (2 TP + FP + FN); precision is 0 when nothing is called
    anomalous (scikit-learn's zero_division=0).
    """
    is_positive = np.asarray(labels) != 0
    predicted = np.asarray(scores) >= threshold
    if is_positive.shape != predicted.shape:
        raise ValueError(f"labels and scores must have the same shape; got {is_positive.shape} and {predicted.shape}.")
    if not is_positive.any():
        raise ValueError("f1_at needs at least one anomalous label.")
    tp = int(np.count_nonzero(predicted & is_positive))
    fp = int(np.count_nonzero(predicted)) - tp
    fn = int(np.count_nonzero(is_positive)) - tp
    return {"f1": 2 * tp / (2 * tp + fp + fn), "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn)}


def threshold_row(labels: np.ndarray, scores: np.ndarray, thresholds: dict[str, float]) -> dict[str, float]:
    """What each threshold costs on the test set, as metrics.csv columns: threshold_<rule>,
    f1_<rule>, precision_<rule> and recall_<rule> for each rule of `thresholds` (rule -> t)."""
    row = {}
    for rule, threshold in thresholds.items():
        row[f"threshold_{rule}"] = threshold
        row.update({f"{name}_{rule}": value for name, value in f1_at(labels, scores, threshold).items()})
    return row


# MVTec AD 2 (Heckler-Kram et al., 2025) ranks methods on segmentation: AU-PRO integrated up to an
# FPR of 0.05 (not MVTec AD's 0.3), and SegF1, the F1 of the pixels of binarized anomaly maps.
MVTEC_AD_2_METRICS = ("aupro_005", "seg_f1")
MVTEC_AD_2_FPR_LIMIT = 0.05


def mvtec_ad_2_metrics(masks: np.ndarray, maps: np.ndarray, threshold: float) -> dict[str, float]:
    """MVTEC_AD_2_METRICS of a test set with ground truth (test_public), as fractions.

    masks (N, H, W), nonzero is anomalous; maps (N, H, W); threshold: a pixel with score >=
    threshold is anomalous in the binarized map. SegF1 counts the pixels of the whole set at once
    (one confusion matrix, not a mean over images).
    """
    masks, maps = _check_masks_maps(masks, maps)
    return {"aupro_005": aupro(masks, maps, MVTEC_AD_2_FPR_LIMIT), "seg_f1": f1_at(masks, maps, threshold)["f1"]}


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """AU-ROC over all pixels of the set: masks (N, H, W), nonzero is anomalous; maps (N, H, W)."""
    masks, maps = _check_masks_maps(masks, maps)
    return _auroc(masks.ravel(), maps.ravel())


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Standard AU-PRO (MVTec AD, Bergmann et al.) of one category's test set, normalised to [0, 1].

    masks: (N, H, W) ground truth, nonzero is anomalous; maps: (N, H, W) anomaly scores.
    Every distinct score is a threshold t; pixels with score >= t are predicted anomalous.
    FPR(t) is the fraction of all normal pixels of the set at or above t (good images
    included); PRO(t) is the mean over all regions of the set (8-connected components
    of each image's mask) of the fraction of the region at or above t. The curve
    starts at (0, 0), is integrated over FPR in [0, fpr_limit] by the trapezoid rule,
    with PRO linearly interpolated at fpr_limit, and divided by fpr_limit.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}.")
    masks, maps = _check_masks_maps(masks, maps)
    regions, n_regions = _label_regions(masks)
    regions = regions.ravel()  # (P,), 0 is normal, 1..n_regions name the regions
    scores = maps.ravel()      # (P,)
    if n_regions == 0:
        raise ValueError("aupro needs at least one anomalous pixel in masks; this set has none.")
    region_sizes = np.bincount(regions)  # (n_regions + 1,)
    n_normal = int(region_sizes[0])
    if n_normal == 0:
        raise ValueError("aupro needs at least one normal pixel in masks; "
                         "every pixel of this set is anomalous.")

    # PRO only moves at anomalous scores: a pixel of region r adds 1 / (size_r * n_regions)
    # once the threshold reaches it. Sorting just the anomalous pixels with their
    # regions, and the normal scores alone, is exact and much faster than arg-sorting
    # every pixel of the set.
    normal_scores = np.sort(scores[regions == 0])                 # (n_normal,) ascending
    anomalous = regions > 0
    anomalous_scores = scores[anomalous]
    order = np.argsort(anomalous_scores)[::-1]                    # descending score
    anomalous_scores = anomalous_scores[order]                    # (A,)
    pixel_weight = 1.0 / (region_sizes[regions[anomalous][order]] * float(n_regions))
    # Ties are one threshold: take each anomalous score's value at the last pixel of its run.
    run_ends = np.flatnonzero(anomalous_scores[1:] != anomalous_scores[:-1])
    run_ends = np.append(run_ends, anomalous_scores.size - 1)
    thresholds = anomalous_scores[run_ends]                       # (T,) distinct, descending
    pro_at = np.cumsum(pixel_weight)[run_ends]                    # (T,) PRO at each threshold, float64
    pro_before = np.concatenate(([0.0], pro_at[:-1]))             # PRO just above each threshold
    fp_above = n_normal - np.searchsorted(normal_scores, thresholds[::-1], side="right")[::-1]
    fp_at = n_normal - np.searchsorted(normal_scores, thresholds[::-1], side="left")[::-1]
    # Between thresholds only normal pixels pass, a horizontal move from (fp_at[i-1], pro_at[i-1])
    # to (fp_above[i], pro_before[i]); normals tied with threshold i make the step to
    # (fp_at[i], pro_at[i]) a diagonal. After the last threshold the remaining normals lead to (1, PRO).
    fp = np.concatenate(([0], np.stack([fp_above, fp_at], axis=1).ravel(), [n_normal]))
    pro = np.concatenate(([0.0], np.stack([pro_before, pro_at], axis=1).ravel(), [pro_at[-1]]))
    return _area_up_to(fp / n_normal, pro, fpr_limit) / fpr_limit


def aupro_per_image(masks: np.ndarray, maps: np.ndarray) -> float:
    """The authors' per-image "AU-PRO" from the MRKD release; NOT the standard metric, reads higher.

    Reported beside `aupro` so readers can compare like with like with the authors'
    numbers. masks: (N, H, W), maps: (N, H, W). For each image whose mask is not
    empty (good images are skipped, so their false positives never count):
    200 thresholds lo + k * (hi - lo) / 200, k = 0..199, with lo, hi that image's min
    and max score (the authors' np.arange(lo, hi, delta)); pixels with score > t are
    predicted anomalous; PRO is the mean over the image's regions (8-connected, as
    skimage.measure.label gives by default) of the fraction predicted anomalous;
    FPR is the fraction of that image's normal pixels predicted anomalous. Points with
    FPR < 0.3 are kept, their FPR divided by its own maximum, and the area under PRO
    over that rescaled FPR taken by the trapezoid rule. The result is the mean over
    images.

    Two cases where the authors' code has no number, and what this function gives:
    - all kept points have FPR 0 (e.g. a map equal to its mask): the rescaling is
      0 / 0 and their code yields NaN; here the curve is taken as flat at the PRO of
      the lowest kept threshold, so the image scores that PRO (1.0 for a perfect map,
      0.0 for a constant map);
    - fewer than two kept points with FPR > 0: sklearn.metrics.auc raises; here the
      trapezoid of a single point, 0.0.
    """
    masks, maps = _check_masks_maps(masks, maps)
    n_bins = PER_IMAGE_THRESHOLDS + 1
    areas = []
    for mask, image_map in zip(masks, maps):
        regions, n_regions = _label_regions(mask[None])
        if n_regions == 0:
            continue
        regions = regions.ravel()     # (H*W,), 0 is normal
        scores = image_map.ravel()    # (H*W,)
        lo, hi = float(scores.min()), float(scores.max())
        thresholds = lo + (hi - lo) / PER_IMAGE_THRESHOLDS * np.arange(PER_IMAGE_THRESHOLDS)  # (K,)
        # bins[p] counts the thresholds strictly below score p, so score p > thresholds[k] iff bins[p] > k:
        # one pass over the pixels replaces binarising the image at each threshold.
        bins = np.searchsorted(thresholds, scores, side="left")
        counts = np.bincount(regions * n_bins + bins, minlength=(n_regions + 1) * n_bins)
        counts = counts.reshape(n_regions + 1, n_bins)                # (R + 1, K + 1)
        at_or_above = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]      # [:, k]: pixels with bins >= k
        above = at_or_above[:, 1:]                                     # (R + 1, K): pixels > thresholds[k]
        sizes = at_or_above[:, 0]                                      # (R + 1,)
        # An image with no normal pixel has no false positive at any threshold.
        fpr = above[0] / max(int(sizes[0]), 1)                         # (K,), non-increasing in k
        pro = (above[1:] / sizes[1:, None]).mean(axis=0)               # (K,)
        kept = fpr < PER_IMAGE_FPR_LIMIT
        # Highest threshold first, so FPR rises along the curve (sklearn.metrics.auc, which the
        # authors use, reverses their decreasing points the same way).
        fpr, pro = fpr[kept][::-1], pro[kept][::-1]
        if fpr.size == 0:
            areas.append(0.0)
        elif fpr[-1] == 0:
            areas.append(float(pro[-1]))
        else:
            areas.append(float(np.trapezoid(pro, fpr / fpr[-1])))
    if not areas:
        raise ValueError("aupro_per_image needs at least one image with anomalous pixels in masks; "
                         "this set has none.")
    return float(np.mean(areas))


def _auroc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """AU-ROC as the Mann-Whitney statistic: is_positive (P,) bool, scores (P,).

    The share of (positive, negative) pairs where the positive scores higher, ties
    counting half; equal to the trapezoid area under the ROC curve that
    scikit-learn computes, with one sort of the negatives instead of an arg-sort of
    every score.
    """
    if is_positive.all() or not is_positive.any():
        raise ValueError("AU-ROC needs both anomalous and normal samples; only one kind is present.")
    negatives = np.sort(scores[~is_positive])
    positives = np.sort(scores[is_positive])  # sorted queries make the searches cache-friendly
    below = np.searchsorted(negatives, positives, side="left").sum(dtype=np.int64)
    at_or_below = np.searchsorted(negatives, positives, side="right").sum(dtype=np.int64)
    return float((below + at_or_below) / (2.0 * positives.size * negatives.size))


def _check_masks_maps(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks as bool (N, H, W) and maps as given, after checking shapes and NaN."""
    masks = np.asarray(masks)
    maps = np.asarray(maps)
    if masks.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(f"masks and maps must both have shape (N, H, W); "
                         f"got {masks.shape} and {maps.shape}.")
    if np.isnan(maps).any():
        raise ValueError("maps contain NaN; the anomaly maps must be finite.")
    return masks.astype(bool, copy=False), maps


def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Ground-truth regions: 8-connected components of each image's mask, numbered across the set.

    masks: (N, H, W) bool. Returns labels (N, H, W), 0 for normal pixels, and the
    number of regions. The structure joins neighbours within an image only, so one
    call labels the whole set with the same components as scipy.ndimage.label (3x3
    ones) or skimage.measure.label applied image by image.
    """
    within_image = np.zeros((3, 3, 3), dtype=bool)
    within_image[1] = True
    labels, n_regions = ndimage.label(masks, structure=within_image)
    return labels, int(n_regions)


def _area_up_to(x: np.ndarray, y: np.ndarray, x_limit: float) -> float:
    """Trapezoid area under the curve (x, y) over [0, x_limit], y linearly interpolated at x_limit.

    x: (T,) non-decreasing, starting at 0 and ending at or beyond x_limit; y: (T,).
    """
    n_inside = int(np.searchsorted(x, x_limit, side="right"))  # points with x <= x_limit
    x_part, y_part = x[:n_inside], y[:n_inside]
    if n_inside < x.size and x_part[-1] < x_limit:
        x0, x1, y0, y1 = x[n_inside - 1], x[n_inside], y[n_inside - 1], y[n_inside]
        y_limit = y0 + (y1 - y0) * (x_limit - x0) / (x1 - x0)
        x_part = np.append(x_part, x_limit)
        y_part = np.append(y_part, y_limit)
    return float(np.trapezoid(y_part, x_part))


def roc_curve(labels: np.ndarray, scores: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr), each (T,) float32, from (0, 0) to (1, 1), thinned to at most max_points.

    labels: any shape, nonzero is positive (anomalous); scores: the same shape, e.g. the
    raveled masks and maps of a whole test set. Every distinct score is a threshold t
    (ties are one point); a sample is predicted positive when its score >= t. Before
    thinning the points equal sklearn.metrics.roc_curve(..., drop_intermediate=False).
    Thinning keeps points evenly spaced along the curve's length, not its index: on
    pixel data almost all points lie on the long flat part, and picking by index would
    cut the steep rise at small FPR to a few chords. The first and last points stay.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}.")
    is_positive = np.asarray(labels).ravel() != 0
    scores = np.asarray(scores).ravel()
    if is_positive.shape != scores.shape:
        raise ValueError(f"labels and scores must have the same size; got {is_positive.size} and {scores.size}.")
    if is_positive.all() or not is_positive.any():
        raise ValueError("ROC needs both anomalous and normal samples; only one kind is present.")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; the ROC needs finite scores.")
    # One sort of all scores gives the thresholds and the count at or above each; the
    # positives (the few anomalous pixels) are sorted alone to count them by search:
    # several times faster than arg-sorting every score and gathering the labels.
    sorted_scores = np.sort(scores)[::-1]                          # (P,) descending
    # The last sample of each run of equal scores closes that threshold.
    run_ends = np.append(np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), scores.size - 1)
    thresholds = sorted_scores[run_ends]                           # (T,) distinct, descending
    positive_scores = np.sort(scores[is_positive])
    tp = positive_scores.size - np.searchsorted(positive_scores, thresholds[::-1], side="left")[::-1]  # (T,)
    fp = run_ends + 1 - tp                                         # (T,) negatives at or above each threshold
    fpr = np.concatenate(([0.0], fp / fp[-1]))
    tpr = np.concatenate(([0.0], tp / tp[-1]))
    if fpr.size > max_points:
        length = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(fpr), np.diff(tpr)))))
        # Each threshold adds a sample, so length rises strictly: the first target picks the
        # first point, the last target the last point, and unique merges targets on one long step.
        keep = np.unique(np.searchsorted(length, np.linspace(0.0, length[-1], max_points), side="left"))
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr.astype(np.float32), tpr.astype(np.float32)
