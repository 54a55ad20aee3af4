"""One category's evaluation as a typed record: results/<run>/predictions/<category>.npz.

Written once by the evaluation (main.py), read by the figures (utils/figures.py) and by
--predict, which takes its decision threshold and score range. N test images, k examples,
S image side, h = w = S / 4.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from utils.files import atomic_write
from utils.metrics import roc_curve


@dataclass(frozen=True)
class Predictions:
    category: str
    scores: np.ndarray            # (N,) float32 image scores
    labels: np.ndarray            # (N,) int64, 1 is anomalous
    defects: np.ndarray           # (N,) str, "good" for normal images
    metrics_names: np.ndarray     # (4,) str: image_auroc, pixel_auroc, aupro, aupro_per_image
    metrics_values: np.ndarray    # (4,) float64, fractions
    threshold: float | None       # the image score at and above which an image is anomalous; None: an
                                  # evaluation older than thresholds
    threshold_rule: str           # how it was chosen (utils.metrics.THRESHOLD_RULES)
    pixel_fpr: np.ndarray         # (P,) float32, the pixel ROC curve (utils.metrics.roc_curve)
    pixel_tpr: np.ndarray         # (P,) float32
    example_index: np.ndarray     # (k,) int64 into the test set
    example_images: np.ndarray    # (k, S, S, 3) uint8
    example_masks: np.ndarray     # (k, S, S) bool
    example_maps: np.ndarray      # (k, S, S) float32 smoothed anomaly maps
    feature_input: np.ndarray     # (k, h, w, 3) float32 level-1 input features on 3 principal components
    feature_restored: np.ndarray  # (k, h, w, 3) float32 restored features, same projection

    @classmethod
    def of(cls, category: str, scores: np.ndarray, labels: np.ndarray, defects: list[str], values: dict[str, float],
           threshold: float, threshold_rule: str, masks: np.ndarray, maps: np.ndarray, images: np.ndarray, examples: np.ndarray,
           feature_input: np.ndarray, feature_restored: np.ndarray) -> Predictions:
        """The record of an evaluation: every test image's score, and the examples kept whole
        (masks (N, S, S), maps (N, S, S), images (N, S, S, 3); examples (k,) indices)."""
        pixel_fpr, pixel_tpr = roc_curve(masks.ravel(), maps.ravel())
        return cls(category, scores, labels, np.array(defects), np.array(list(values)),
                   np.array(list(values.values())), threshold, threshold_rule, pixel_fpr, pixel_tpr, examples, images[examples],
                   masks[examples], maps[examples], feature_input, feature_restored)

    @property
    def metrics(self) -> dict[str, float]:
        return dict(zip(self.metrics_names.tolist(), self.metrics_values.tolist()))

    def save(self, path: Path) -> None:
        """Written atomically (utils/files.py): a failed write keeps the previous file."""
        values = asdict(self)
        values["threshold"] = np.float64(np.nan if self.threshold is None else self.threshold)
        with atomic_write(Path(path)) as file:  # a file object: given a name, NumPy would append .npz to it
            np.savez_compressed(file, **values)

    @classmethod
    def load(cls, path: Path) -> Predictions:
        """The record as saved; 0-d arrays become Python scalars."""
        with np.load(path, allow_pickle=False) as data:
            values = {name: data[name].item() if data[name].ndim == 0 else data[name] for name in data.files}
        threshold = values.get("threshold")
        values["threshold"] = None if threshold is None or np.isnan(threshold) else threshold
        values.setdefault("threshold_rule", "f1_test")  # the only rule before rules were recorded
        return cls(**{f.name: values[f.name] for f in fields(cls)})
