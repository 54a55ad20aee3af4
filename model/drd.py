"""DRD's training losses and image-score refinement as pure functions.

DRD (dual reverse distillation, Ge et al., Neurocomputing 2025) runs a normal
image and its pseudo-abnormal copy (dataset/pseudo.py) through teacher,
bottleneck (model.bottleneck.CascadeFusionBottleneck) and student, and sums
three losses: kd, restoration and segmentation. Features are lists ordered
finest level first: [level 1 (H/4), level 2 (H/8), level 3 (H/16)].
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from model.loss import level_distances, upsample_levels

if TYPE_CHECKING:
    from model.mrkd import MRKD
    from model.generator import MaskDraws

# Std of the Gaussian noise added to the pseudo-abnormal image's teacher features
# before the bottleneck (DRD's public implementation).
NOISE_STD = 0.1
# Weight of the segmentation loss in the sum of the three losses (DRD's public implementation).
SEGMENTATION_WEIGHT = 0.1


def add_noise(features: Sequence[torch.Tensor], std: float,
              generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Each feature plus std x N(0, 1) noise of its shape, drawn on its device.

    generator: None for the global RNG, else a torch.Generator on the features' device.
    """
    return [f + std * torch.randn(f.shape, generator=generator, device=f.device, dtype=f.dtype)
            for f in features]


def pixel_cosine_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    """DRD's kd loss, pixel term: sum over levels of the mean over (B, H, W) of 1 - cosine over channels.

    Each level is (B, C, H, W); returns a scalar.
    """
    return sum(distance.mean() for distance in level_distances(teacher, student))


def channel_cosine_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    """DRD's kd loss, channel term: sum over levels of the mean over (B, C) of 1 - cosine
    between a channel's flattened (H x W) map in teacher and student.

    Each level is (B, C, H, W); returns a scalar.
    """
    loss = teacher[0].new_zeros((), dtype=torch.float32)
    for t, s in zip(teacher, student):
        similarity = F.cosine_similarity(t.flatten(2).float(), s.flatten(2).float(), dim=2)  # (B, C)
        loss = loss + (1 - similarity).mean()
    return loss


def kd_loss(teacher_normal: Sequence[torch.Tensor], student_normal: Sequence[torch.Tensor]) -> torch.Tensor:
    """DRD's kd loss on the normal image: the pixel term plus the channel term, summed over levels."""
    return pixel_cosine_loss(teacher_normal, student_normal) + channel_cosine_loss(teacher_normal, student_normal)


def restoration_loss(teacher_normal: Sequence[torch.Tensor], student_pseudo: Sequence[torch.Tensor]) -> torch.Tensor:
    """DRD's restoration loss: the channel term between the normal image's teacher features
    and the student's output for the pseudo-abnormal image."""
    return channel_cosine_loss(teacher_normal, student_pseudo)


def segmentation_loss(teacher_pseudo_noisy: Sequence[torch.Tensor], student_pseudo: Sequence[torch.Tensor],
                      pseudo_images: torch.Tensor, normal_images: torch.Tensor,
                      weight: float = SEGMENTATION_WEIGHT) -> torch.Tensor:
    """DRD's segmentation loss: weight x L1 between the predicted and the target difference maps.

    Predicted: the mean over levels of 1 - cosine over channels (noisy teacher
    features of the pseudo image vs the student's output for it), upsampled
    bilinearly (align_corners=True) to the image size, (B, H, W).
    Target: 1 - cosine over RGB at each pixel between pseudo and normal image, (B, H, W).
    Images: (B, 3, H, W) square, as fed to the teacher.
    """
    distances = level_distances(teacher_pseudo_noisy, student_pseudo)
    predicted = upsample_levels(distances, normal_images.shape[-1]).mean(dim=1)  # (B, H, W)
    target = 1 - F.cosine_similarity(pseudo_images.float(), normal_images.float(), dim=1)
    return weight * F.l1_loss(predicted, target)


def drd_loss(teacher_normal: Sequence[torch.Tensor], student_normal: Sequence[torch.Tensor],
             teacher_pseudo_noisy: Sequence[torch.Tensor], student_pseudo: Sequence[torch.Tensor],
             normal_images: torch.Tensor, pseudo_images: torch.Tensor) -> torch.Tensor:
    """DRD's training loss: kd + restoration + segmentation, a scalar."""
    return (kd_loss(teacher_normal, student_normal)
            + restoration_loss(teacher_normal, student_pseudo)
            + segmentation_loss(teacher_pseudo_noisy, student_pseudo, pseudo_images, normal_images))


def drd_objective(model: MRKD, clean: torch.Tensor, pseudo: torch.Tensor,
                  draws: MaskDraws | None) -> torch.Tensor:
    """DRD's training step: the normal and the pseudo-abnormal image both go through
    bottleneck and student, the pseudo-abnormal teacher features with Gaussian noise;
    returns drd_loss."""
    target, pseudo_features = model.encode(clean, pseudo)
    pseudo_features = add_noise(pseudo_features, NOISE_STD)
    restored = model.restore(model.decode(model.project(target)), draws)
    restored_pseudo = model.restore(model.decode(model.project(pseudo_features)), draws)
    return drd_loss(target, restored, pseudo_features, restored_pseudo, clean, pseudo)


def refined_image_score(level_maps: Sequence[torch.Tensor], smoothed: torch.Tensor) -> torch.Tensor:
    """DRD's refined image score: (1 + v) x max of the smoothed map, (B,).

    level_maps: L maps (B, h_l, w_l) of 1 - cosine at each level's own resolution.
    smoothed: (B, S, S), the smoothed fused pixel map.
    v is, per image, the maximum (at its own resolution) of the level whose map,
    upsampled to S x S, has the smallest variance; ties go to the finer level.
    """
    upsampled = upsample_levels(level_maps, smoothed.shape[-1])             # (B, L, S, S)
    # Every level has S x S pixels, so population and unbiased variance pick the same level.
    variance = upsampled.flatten(2).var(dim=2, correction=0)                # (B, L)
    level_max = torch.stack([m.flatten(1).amax(dim=1) for m in level_maps], dim=1)  # (B, L)
    v = level_max.gather(1, variance.argmin(dim=1, keepdim=True))[:, 0]    # (B,)
    return (1 + v) * smoothed.flatten(1).amax(dim=1)
