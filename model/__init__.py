"""MRKD's networks (Fig. 3): frozen teacher T, bottleneck B, reversed student S, generation modules G."""
from __future__ import annotations

import torch
from torch import nn

from model import drd
from model.bottleneck import CascadeFusionBottleneck, OneClassBottleneck
from model.generator import Generator, MaskGenerator
from model.loss import distillation_loss
from model.student import ReversedStudent
from model.teacher import BACKBONES, Teacher

__all__ = ["BACKBONES", "BOTTLENECKS", "MRKD", "OBJECTIVES", "build_model", "mrkd_objective"]

# "ocbe": RD4AD's one-class bottleneck embedding, MRKD's (Sec. 4.1); "mfcf": DRD's cascade fusion.
BOTTLENECKS = {"ocbe": OneClassBottleneck, "mfcf": CascadeFusionBottleneck}


class MRKD(nn.Module):
    """Teacher, bottleneck, student and (with FLM) one generation module per level.

    Attributes: `teacher`, `bottleneck`, `student`, and `generators`, a ModuleList
    ordered finest level first (level 1: H/4, level 2: H/8, level 3: H/16), empty
    when FLM is off, in which case the student's output is compared directly.
    """

    def __init__(self, teacher: Teacher, flm: bool, flm_ratio: float, bottleneck: str):
        super().__init__()
        self.teacher = teacher
        self.bottleneck = BOTTLENECKS[bottleneck](teacher.block, teacher.channels, teacher.width_per_group)
        self.student = ReversedStudent(teacher.block, self.bottleneck.out_channels, teacher.width_per_group)
        self.generators = nn.ModuleList([Generator(c) for c in teacher.channels] if flm else [])
        self.flm_ratio = flm_ratio

    def trainable_parameters(self) -> list[nn.Parameter]:
        """theta_B, theta_S and theta_G: everything but the frozen teacher."""
        return [p for part in (self.bottleneck, self.student, self.generators) for p in part.parameters()]

    def forward(self, images: torch.Tensor, augmented: torch.Tensor | None = None,
                mask_generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher features of `images` and the restored features, Eq. (1)-(3).

        images: (B, 3, H, W), the clean images x_n whose teacher features f_T,n are the
        target. augmented: the ILM inputs x_a (B, 3, H, W), or None to feed the clean
        features to the student (test time, and training without ILM as in RD4AD).
        mask_generator draws the FLM masks (None: the global RNG).
        Returns (f_T [3 x (B, C_l, H_l, W_l)], f_G [same shapes]), finest level first.
        """
        target, inputs = self.teacher_pair(images, augmented)
        return target, self.decode(inputs, mask_generator)

    def decode(self, features: list[torch.Tensor], mask_generator: MaskGenerator = None) -> list[torch.Tensor]:
        """Teacher features f_T -> restored features f_G = G(S(B(f_T)) * M), Eq. (1)-(3)."""
        return self.restore(self.student(self.bottleneck(features)), mask_generator)

    def distill(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher features f_T and student features f_S = S(B(f_T)) of clean images, Eq. (1).

        Test time: f_S is then restored once per FLM mask (restore).
        """
        target = self.teacher(images)
        return target, self.student(self.bottleneck(target))

    def teacher_pair(self, images: torch.Tensor, augmented: torch.Tensor | None = None
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """f_T,n = T(x_n) and f_T,a = T(x_a) (f_T,n twice when augmented is None), Eq. (1).

        One teacher pass over both batches: the teacher is in eval mode, so stacking
        changes nothing but the speed.
        """
        if augmented is None:
            target = self.teacher(images)
            return target, target
        both = self.teacher(torch.cat([images, augmented]))
        return [f[: len(images)] for f in both], [f[len(images):] for f in both]

    def restore(self, student: list[torch.Tensor], mask_generator: MaskGenerator = None) -> list[torch.Tensor]:
        """FLM, Eq. (2)-(3): f_G^l = G^l(f_S^l * M^l); without FLM the student's features as they are.

        Only this step is random, so K test-time masks need K calls of it, not K passes
        of the whole network.
        """
        if not len(self.generators):
            return student
        return [g(f, self.flm_ratio, mask_generator) for g, f in zip(self.generators, student)]


def mrkd_objective(model: MRKD, clean: torch.Tensor, augmented: torch.Tensor | None,
                   mask_generator: torch.Generator | None) -> torch.Tensor:
    """MRKD's training loss, Eq. (4): the student restores the clean image's teacher features
    from the ILM input (augmented None: from the clean image itself, as RD4AD)."""
    target, restored = model(clean, augmented, mask_generator)
    return distillation_loss(target, restored)


def build_model(backbone: str, weights: str | None, flm_ratio: float, flm: bool, bottleneck: str) -> MRKD:
    """MRKD on a torchvision backbone (Table 8: resnet18, resnet50, wide_resnet50_2).

    weights: "imagenet" (torchvision's IMAGENET1K_V1, the paper's), None (random
    init, for tests and offline demos) or the path of a .pth state dict. bottleneck:
    "ocbe" (MRKD's) or "mfcf" (DRD's).
    """
    return MRKD(Teacher(backbone, weights), flm=flm, flm_ratio=flm_ratio, bottleneck=bottleneck)


# The training objective of each method's loss (LOSS in main.py): MRKD's Eq. (4) or DRD's three losses.
OBJECTIVES = {"mrkd": mrkd_objective, "drd": drd.drd_objective}
