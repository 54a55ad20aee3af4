"""What differs between the methods of the RD family, in one place: training objective, bottleneck, image score.

RD4AD is MRKD with ILM and FLM off; DRD is its own objective, bottleneck and score
(model/drd.py); RD++ its objective and a multi-projection layer (model/rdpp.py, model/projection.py). main.py's METHODS presets the constants that choose among these, and
dataset/images.py: SYNTHESES holds the training images' anomalies (dataset/ imports no model).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from model import drd, rdpp
from model.bottleneck import CascadeFusionBottleneck, OneClassBottleneck
from model.generator import MaskDraws
from model.loss import distillation_loss, image_score
from model.mrkd import MRKD
from model.teacher import Teacher

def build_model(*, backbone: str, weights: str | None, bottleneck: str, flm: bool, flm_ratio: float,
                projection: bool = False) -> MRKD:
    """MRKD on a torchvision backbone (Table 8: resnet18, resnet50, wide_resnet50_2).

    weights: "imagenet" (torchvision's IMAGENET1K_V1, the paper's), None (random init,
    for tests and offline demos) or the path of a .pth state dict; bottleneck: a key of
    BOTTLENECKS; projection: RD++'s multi-projection between teacher and bottleneck.
    """
    return MRKD(teacher=Teacher(backbone, weights), bottleneck=BOTTLENECKS[bottleneck], flm=flm, flm_ratio=flm_ratio,
                projection=projection)


# A training objective: (model, clean images, ILM inputs or None, FLM mask draws) -> loss.
Objective = Callable[[MRKD, torch.Tensor, "torch.Tensor | None", "MaskDraws | None"], torch.Tensor]
# An image score: (level distances [(B, h_l, w_l)], smoothed maps (B, S, S)) -> (B,).
ImageScore = Callable[[Sequence[torch.Tensor], torch.Tensor], torch.Tensor]


def mrkd_objective(model: MRKD, clean: torch.Tensor, augmented: torch.Tensor | None,
                   draws: MaskDraws | None) -> torch.Tensor:
    """MRKD's training loss, Eq. (4): the student restores the clean image's teacher features
    f_T,n from the ILM input's f_T,a (augmented None: from the clean image itself, as RD4AD)."""
    target, inputs = model.encode(clean, augmented)
    return distillation_loss(target, model.restore(model.decode(model.project(inputs)), draws))


def max_score(distances: Sequence[torch.Tensor], maps: torch.Tensor) -> torch.Tensor:
    """S_AD = max S_AL, Eq. (6)."""
    return image_score(maps)


# LOSS: MRKD's Eq. (4), DRD's three losses, or RD++'s distillation and projection losses.
OBJECTIVES: dict[str, Objective] = {"mrkd": mrkd_objective, "drd": drd.drd_objective, "rdpp": rdpp.rdpp_objective}
# BOTTLENECK: RD4AD's one-class bottleneck embedding (MRKD's, Sec. 4.1) or DRD's cascade fusion.
BOTTLENECKS = {"ocbe": OneClassBottleneck, "mfcf": CascadeFusionBottleneck}
# IMAGE_SCORE: Eq. (6), the map's maximum, or DRD's refined (1 + v) x max.
IMAGE_SCORES: dict[str, ImageScore] = {"max": max_score, "refined": drd.refined_image_score}
