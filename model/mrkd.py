"""MRKD's networks (Fig. 3): frozen teacher T, bottleneck B, reversed student S, generation modules G.

Training and test time take the same four steps, each named once:
    f_T = encode(x)                the frozen teacher, Eq. (1)
    f_P = project(f_T)             RD++'s multi-projection where the method has one (PROJECTION), else f_T
    f_S = decode(f_P) = S(B(f_P))  bottleneck and reversed student (Sec. 3.3)
    f_G = restore(f_S)             FLM, Eq. (2)-(3)
Training feeds encode the clean image x_n (the target f_T,n) and the ILM input x_a (whose
features go on through the other steps); test time feeds the test image alone.
Features are lists ordered finest level first: level 1 (H/4), level 2 (H/8), level 3 (H/16).
"""
from __future__ import annotations

import torch
from torch import nn

from model.generator import Generator, Generators, MaskDraws, flm_mask
from model.projection import MultiProjection
from model.student import ReversedStudent
from model.teacher import Teacher


class MRKD(nn.Module):
    """Teacher, bottleneck, student and (with FLM) one generation module per level.

    Attributes: `teacher`, `projection` (RD++'s multi-projection, or None), `bottleneck`,
    `student`, and `generators` (G^1-G^3 as one module, model/generator.py: Generators), empty when
    FLM is off, in which case the student's output is compared directly.
    """

    def __init__(self, *, teacher: Teacher, bottleneck: type[nn.Module], flm: bool, flm_ratio: float,
                 projection: bool = False):
        super().__init__()
        self.teacher = teacher
        self.projection = MultiProjection(teacher.channels) if projection else None
        self.bottleneck = bottleneck(teacher.block, teacher.channels, teacher.width_per_group)
        self.student = ReversedStudent(teacher.block, self.bottleneck.out_channels, teacher.width_per_group)
        self.generators = Generators([Generator(c) for c in teacher.channels] if flm else [])
        self.flm_ratio = flm_ratio

    def trained_parts(self) -> dict[str, nn.Module]:
        """Everything but the frozen teacher, by the names checkpoints keep them under."""
        parts = {"bottleneck": self.bottleneck, "student": self.student, "generators": self.generators}
        return parts if self.projection is None else {**parts, "projection": self.projection}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """theta_B, theta_S and theta_G (and RD++'s projection): everything but the frozen teacher."""
        return [p for part in self.trained_parts().values() for p in part.parameters()]

    def encode(self, images: torch.Tensor, augmented: torch.Tensor | None = None
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """f_T,n = T(x_n) and f_T,a = T(x_a), Eq. (1): [(B, C_l, H_l, W_l)] each; f_T,n twice
        when augmented is None (test time, and training without ILM as RD4AD).

        One teacher pass over both batches: the teacher is in eval mode, so stacking
        changes nothing but the speed.
        """
        if augmented is None:
            target = self.teacher(images)
            return target, target
        both = self.teacher(torch.cat([images, augmented]))
        return [f[: len(images)] for f in both], [f[len(images):] for f in both]

    def project(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """f_P: the features the bottleneck takes; MRKD's are the teacher's f_T themselves, RD++'s
        its multi-projection of them (model/projection.py)."""
        return features if self.projection is None else self.projection(features)

    def decode(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """f_S = S(B(f)) (Sec. 3.3): the one-class embedding of the three levels, decoded by the
        reversed student into [(B, C_l, H_l, W_l)], finest level first."""
        return self.student(self.bottleneck(features))

    def restore(self, decoded: list[torch.Tensor], draws: MaskDraws | None = None) -> list[torch.Tensor]:
        """FLM, Eq. (2)-(3): f_G^l = G^l(f_S^l * M^l) of the student's features f_S (`decoded`); without
        FLM f_S as they are.

        Only this step is random, so K test-time masks need K calls of it, not K passes
        of the whole network. draws: where the masks' R come from (None: the global RNG).
        """
        if not len(self.generators):
            return decoded
        masks = [flm_mask(f, self.flm_ratio, draws) for f in decoded]  # level by level, the draws' order as ever
        return self.generators(decoded, masks)
