"""The paper's experiments (Sec. 4) as plain data: `python main.py --experiment=<name>` runs every row.

Each row is a label, the constants it changes from the run's configuration, and the
paper's numbers for it (image AU-ROC, pixel AU-ROC, AU-PRO as the authors compute it,
i.e. our aupro_per_image; None where the paper reports none), all MVTec AD means
unless the row changes the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    label: str
    constants: dict[str, Any] = field(default_factory=dict)
    paper: tuple[float | None, float | None, float | None] = (None, None, None)


@dataclass(frozen=True)
class Preset:
    title: str
    rows: tuple[Row, ...]
    features: tuple[str, str] | None = None  # Fig. 9: labels of the rows with and without FLM
    sweep: str | None = None                 # Fig. 11: the constant swept along the x axis


PRESETS = {
    "table3": Preset("Table 3: MTD, image AU-ROC", (
        Row("MRKD on MTD", {"DATASET": "mtd"}, (98.7, None, None)),
    )),
    "table4": Preset("Table 4: BTAD, pixel AU-ROC (per category in the row's metrics.md)", (
        Row("MRKD on BTAD", {"DATASET": "btad"}, (None, 98.0, None)),
    )),
    "table5": Preset("Table 5: ablation of ILM and FLM", (
        Row("RD4AD (baseline)", {"ILM": False, "FLM": False}, (98.5, 97.8, 93.9)),
        Row("baseline + ILM", {"ILM": True, "FLM": False}, (98.7, 98.2, 95.0)),
        Row("baseline + FLM", {"ILM": False, "FLM": True}, (98.9, 98.0, 94.4)),
        Row("baseline + ILM + FLM (MRKD)", {"ILM": True, "FLM": True}, (98.9, 98.4, 95.3)),
    ), features=("baseline + ILM + FLM (MRKD)", "baseline + ILM")),
    "table6": Preset("Table 6: proportion alpha of NSA-augmented training images", (
        Row("alpha = 0", {"ALPHA": 0.0}, (98.9, 98.0, 94.4)),
        Row("alpha = 0.2", {"ALPHA": 0.2}, (98.9, 98.3, 95.0)),
        Row("alpha = 0.4", {"ALPHA": 0.4}, (98.9, 98.3, 95.2)),
        Row("alpha = 0.6", {"ALPHA": 0.6}, (98.9, 98.3, 95.1)),
        Row("alpha = 0.8", {"ALPHA": 0.8}, (98.9, 98.3, 95.1)),
        Row("alpha = 1", {"ALPHA": 1.0}, (98.9, 98.4, 95.3)),
    )),
    # Rows differing only in evaluation constants share one training (main.py: Training).
    "table7": Preset("Table 7: levels fused into the score map (one training, six evaluations)", (
        Row("SM^1", {"SCORE_LEVELS": (1,)}, (94.2, 95.4, 91.5)),
        Row("SM^2", {"SCORE_LEVELS": (2,)}, (98.0, 97.9, 94.4)),
        Row("SM^3", {"SCORE_LEVELS": (3,)}, (97.3, 97.2, 84.3)),
        Row("SM^1&2", {"SCORE_LEVELS": (1, 2)}, (98.1, 97.8, 94.7)),
        Row("SM^2&3", {"SCORE_LEVELS": (2, 3)}, (98.3, 98.2, 94.3)),
        Row("SM^1&2&3", {"SCORE_LEVELS": (1, 2, 3)}, (98.9, 98.4, 95.3)),
    )),
    "table8": Preset("Table 8: teacher backbone", (
        Row("ResNet18", {"BACKBONE": "resnet18"}, (98.0, 97.8, 94.0)),
        Row("ResNet50", {"BACKBONE": "resnet50"}, (98.7, 98.3, 95.0)),
        Row("WResNet50", {"BACKBONE": "wide_resnet50_2"}, (98.9, 98.4, 95.3)),
    )),
    # RD4AD, MRKD, DRD and RD++ under one protocol: the checkpoint after the last epoch, the same
    # seeds, the standard AU-PRO. Paper numbers: RD4AD as the MRKD paper reports it, DRD from
    # its abstract (image and pixel AU-ROC only), RD++ from its paper (AU-PRO per image); DRD's
    # and RD++'s checkpoints were picked on the test set.
    "family": Preset("The reverse-distillation family under one protocol", (
        Row("RD4AD", {"METHOD": "mrkd", "ILM": False, "FLM": False}, (98.5, 97.8, 93.9)),
        Row("MRKD", {"METHOD": "mrkd"}, (98.9, 98.4, 95.3)),
        Row("DRD", {"METHOD": "drd"}, (99.46, 98.39, None)),
        Row("RD++", {"METHOD": "rdpp"}, (99.44, 98.25, 94.99)),
    )),
    # Fig. 11 gives its numbers only as a plot; the preset draws ours the same way.
    "fig11": Preset("Fig. 11: FLM masking ratio lambda", tuple(
        Row(f"lambda = {ratio}", {"FLM_RATIO": ratio}) for ratio in (0.0, 0.2, 0.4, 0.6, 0.8)
    ), sweep="FLM_RATIO"),
}


def slug(label: str) -> str:
    """A folder name for a row: 'baseline + ILM' -> 'baseline_ILM'."""
    return "_".join("".join(c if c.isalnum() or c in "._-" else " " for c in label).split())
