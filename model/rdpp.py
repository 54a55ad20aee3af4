"""RD++'s training losses as pure functions, and its training objective.

RD++ (Tien et al., "Revisiting Reverse Distillation for Anomaly Detection", CVPR
2023) puts a multi-projection layer P (model/projection.py) between teacher and
bottleneck and trains it with three losses on a normal image x_n and its noisy
copy x_a (dataset/simplex.py): self-supervised optimal transport (L_SSOT),
reconstruction (L_recon) and contrast (L_con); the student is distilled as in
RD4AD. Features are lists ordered finest level first: [level 1 (H/4), level 2
(H/8), level 3 (H/16)], each (B, C, H, W).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from geomloss import SamplesLoss

from model.loss import distillation_loss, level_distances

if TYPE_CHECKING:
    from model import MRKD
    from model.generator import MaskDraws

# The Sinkhorn divergence of L_SSOT: cost |x - y|^p / p, entropic blur epsilon = BLUR^p,
# annealed from DIAMETER^p by SCALING^p per iteration, debiased (authors' implementation:
# geomloss.SamplesLoss("sinkhorn", p=2, blur=0.05, diameter=10000000, scaling=0.95)).
SINKHORN_P = 2
SINKHORN_BLUR = 0.05
SINKHORN_DIAMETER = 1e7
SINKHORN_SCALING = 0.95
# Margin of the contrast loss, a torch CosineEmbeddingLoss with target -1 (authors' implementation).
CONTRAST_MARGIN = 0.5
# L_proj = (L_SSOT + 0.01 L_recon + 0.1 L_con) / 1.11 (authors' implementation); the divisor
# is the sum of the three weights.
RECONSTRUCTION_WEIGHT = 0.01
CONTRAST_WEIGHT = 0.1
PROJECTION_NORMALISER = 1.0 + RECONSTRUCTION_WEIGHT + CONTRAST_WEIGHT
# Weight of L_proj in the total loss, main.py's --weight_proj default (authors' implementation).
PROJECTION_WEIGHT = 0.2

# 'tensorized', as the authors' backend='auto' picks for any batch of fewer than 5000 images;
# geomloss 0.3.1's SamplesLoss is 0.2.6's (the authors' pin) with only docstrings changed.
SINKHORN = SamplesLoss("sinkhorn", p=SINKHORN_P, blur=SINKHORN_BLUR, diameter=SINKHORN_DIAMETER,
                       scaling=SINKHORN_SCALING, debias=True, backend="tensorized")


def batch_permutation(batch: int, device: torch.device, draws: MaskDraws | None = None) -> torch.Tensor:
    """pi, a uniformly random permutation of range(batch): the order of L_SSOT's shuffled copy, (B,) int64.

    From `draws` (the argsort of `batch` uniform draws, so the epoch's seeded generator, and
    the captured step's refilled buffers, serve it like FLM's masks); None: torch.randperm on
    the global generator, as the authors draw it.
    """
    if draws is None:
        return torch.randperm(batch).to(device)
    return draws.uniform((batch,), device).argsort()


def ssot_loss(projected_normal: Sequence[torch.Tensor], permutation: torch.Tensor) -> torch.Tensor:
    """L_SSOT, the self-supervised optimal transport loss: sum over levels of the Sinkhorn divergence
    S_eps((1/B) sum_i delta_{phi_i}, (1/B) sum_i delta_{phi_pi(i)}), phi_i = softmax(vec(P^l(f_T^l(x_n,i)))).

    Each normal image's projected map, flattened to one C*H*W vector and softmaxed, is one
    point; the batch is one point cloud, its copy in the order `permutation` (B,) the other,
    as the authors compute it. A permutation leaves a uniform point cloud the same measure,
    so the debiased divergence, and its gradient, are zero up to rounding: the authors'
    term, kept as they run it. Returns a scalar.
    """
    loss = projected_normal[0].new_zeros((), dtype=torch.float32)
    for p in projected_normal:
        phi = torch.softmax(p.flatten(1).float(), dim=1)                 # (B, C*H*W)
        loss = loss + SINKHORN(phi, phi[permutation])
    return loss


def reconstruction_loss(projected_noisy: Sequence[torch.Tensor],
                        projected_normal: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_recon: sum over levels of the mean over (B, H, W) of 1 - cos(P^l(f_T^l(x_a)), P^l(f_T^l(x_n)))
    over channels at each position (the authors' CosineSimilarity on (B, C, H, W), dim 1). A scalar."""
    return sum(distance.mean() for distance in level_distances(projected_noisy, projected_normal))


def contrast_loss(teacher_noisy: Sequence[torch.Tensor], projected_normal: Sequence[torch.Tensor],
                  margin: float = CONTRAST_MARGIN) -> torch.Tensor:
    """L_con: sum over levels of the mean over the batch of max(0, cos(vec(f_T^l(x_a)), vec(P^l(f_T^l(x_n)))) - margin).

    The teacher's (unprojected) features of the noisy image against the projected features
    of the normal one, each sample's whole (C, H, W) map flattened to one vector: the
    authors' CosineEmbeddingLoss(margin=0.5) with target -1 for every pair. A scalar.
    """
    loss = projected_normal[0].new_zeros((), dtype=torch.float32)
    for t, n in zip(teacher_noisy, projected_normal):
        similarity = F.cosine_similarity(t.flatten(1).float(), n.flatten(1).float(), dim=1)  # (B,)
        loss = loss + (similarity - margin).clamp(min=0).mean()
    return loss


def projection_loss(teacher_noisy: Sequence[torch.Tensor], projected_noisy: Sequence[torch.Tensor],
                    projected_normal: Sequence[torch.Tensor], permutation: torch.Tensor) -> torch.Tensor:
    """L_proj = (L_SSOT + 0.01 L_recon + 0.1 L_con) / 1.11, a scalar."""
    return (ssot_loss(projected_normal, permutation)
            + RECONSTRUCTION_WEIGHT * reconstruction_loss(projected_noisy, projected_normal)
            + CONTRAST_WEIGHT * contrast_loss(teacher_noisy, projected_normal)) / PROJECTION_NORMALISER


def rdpp_loss(teacher_normal: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
              teacher_noisy: Sequence[torch.Tensor], projected_noisy: Sequence[torch.Tensor],
              projected_normal: Sequence[torch.Tensor], permutation: torch.Tensor) -> torch.Tensor:
    """RD++'s total loss L_KD + 0.2 L_proj, a scalar; L_KD is RD4AD's (model.loss.distillation_loss)
    between the teacher's features of the normal image and the student's."""
    return (distillation_loss(teacher_normal, student)
            + PROJECTION_WEIGHT * projection_loss(teacher_noisy, projected_noisy, projected_normal, permutation))


def rdpp_objective(model: MRKD, clean: torch.Tensor, noisy: torch.Tensor | None,
                   draws: MaskDraws | None) -> torch.Tensor:
    """RD++'s training step: the student restores f_T(x_n) from B(P(f_T(x_n))); P is trained on
    x_n and the noisy x_a; returns rdpp_loss.

    model: an MRKD with a projection (PROJECTION=True). clean, noisy: (B, 3, H, W), x_n and
    x_a. draws: the source of L_SSOT's shuffle (batch_permutation).
    """
    teacher_normal, teacher_noisy = model.encode(clean, noisy)
    projected_normal, projected_noisy = model.project(teacher_normal), model.project(teacher_noisy)
    student = model.decode(projected_normal)
    permutation = batch_permutation(len(clean), clean.device, draws)
    return rdpp_loss(teacher_normal, student, teacher_noisy, projected_noisy, projected_normal, permutation)
