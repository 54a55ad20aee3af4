"""After a category's evaluation: its decision thresholds and what each costs on the test set, and on
MVTec AD 2 the benchmark's own metrics and the submission of its private test sets."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dataset import CategoryFiles, TestImages, TestSample
from model.engine import Trainer, level1_features, predict
from model.settings import Settings
from utils import metrics, submission
from utils.figures import pca_project


def score_set(trainer: Trainer, images: TestImages, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and smoothed maps (N, S, S) of a set of images, in its order, as the run scores
    its test set."""
    # The images are preloaded: worker processes would only add their start-up time.
    loader = DataLoader(images, batch_size=settings.training.batch_size, pin_memory=trainer.device.type == "cuda")
    return predict(trainer.model, loader, trainer.device, settings.scoring, trainer.execution, settings.training.seed)


def score_files(trainer: Trainer, paths: list[Path], settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """score_set of images without ground truth."""
    return score_set(trainer, TestImages([TestSample(path, None, 0, "good") for path in paths],
                                         settings.training.image_size), settings)


def decide(trainer: Trainer, settings: Settings, category: str, files: CategoryFiles, labels: np.ndarray,
           scores: np.ndarray, masks: np.ndarray, maps: np.ndarray, results: Path) -> dict[str, Any]:
    """The row's decision columns: `threshold` (THRESHOLD's rule, named in `threshold_rule`), and
    each computed rule's threshold, F1, precision and recall on the test set (labels, scores).

    The normal rules score the category's validation images (MVTec AD 2's split, or the training
    images held out for them). On MVTec AD 2 it adds the benchmark's metrics (masks, maps of the
    test set) and writes the private test sets' maps into results/submission/, binarized at the
    mean + 3 std of the validation images' pixel scores, as MVTec's own code suggests.
    """
    normal = score_files(trainer, files.validation, settings) if files.validation else None
    thresholds = metrics.decision_thresholds(labels, scores, None if normal is None else normal[0])
    rule = settings.training.threshold
    row = {"threshold": thresholds[rule], "threshold_rule": rule, **metrics.threshold_row(labels, scores, thresholds)}
    if settings.training.dataset == "mvtec_ad_2":
        pixel_threshold = metrics.mean_std_threshold(normal[1])
        row.update(metrics.mvtec_ad_2_metrics(masks, maps, pixel_threshold))
        private = {split: score_files(trainer, paths, settings)[1] for split, paths in files.private.items()}
        # The run's own earlier submission of the category (an evaluation again, a resume) is replaced.
        submission.write_category(results / "submission", category, files.private, private, pixel_threshold,
                                  replace=True)
    return row


def feature_examples(trainer: Trainer, test_set: TestImages, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fig. 9's examples: up to four anomalous test images, evenly spread (their indices), and
    their level-1 features f_T^1 and f_G^1, projected to RGB (utils/figures.py: pca_project)."""
    anomalous = np.flatnonzero(test_set.labels == 1)
    examples = anomalous[np.linspace(0, len(anomalous) - 1, min(4, len(anomalous))).round().astype(int)]
    images = torch.stack([test_set[i][0] for i in examples])
    return examples, *pca_project(*level1_features(trainer, images, seed))
