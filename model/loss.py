"""The training loss, Eq. (4), and the anomaly scores, Eq. (5)-(6), as pure functions.

Features are lists ordered finest level first: [level 1 (H/4), level 2 (H/8),
level 3 (H/16)]. `levels` names the levels used as the paper numbers them
(Table 7: (1,) is SM^1, (2, 3) is SM^{2&3}, (1, 2, 3) is SM^{1&2&3}).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ALL_LEVELS = (1, 2, 3)


def distillation_loss(teacher: Sequence[torch.Tensor], restored: Sequence[torch.Tensor]) -> torch.Tensor:
    """Loss L, Eq. (4): sum over levels of 1 - cos(vec(f_T,n^l), vec(f_G^l)), averaged over the batch.

    Each sample's whole (C, H, W) map is flattened to one vector, as the authors do.
    """
    loss = teacher[0].new_zeros(())
    for t, g in zip(teacher, restored):
        t, g = t.flatten(1).float(), g.flatten(1).float()   # (B, C*H*W)
        loss = loss + (1 - F.cosine_similarity(t, g, dim=1)).mean()
    return loss


def level_distances(teacher: Sequence[torch.Tensor], restored: Sequence[torch.Tensor],
                    levels: Sequence[int] = ALL_LEVELS) -> list[torch.Tensor]:
    """1 - cosine over channels at each position, per chosen level: [(B, h_l, w_l)], the terms of Eq. (5)."""
    return [1 - F.cosine_similarity(teacher[level - 1].float(), restored[level - 1].float(), dim=1)
            for level in levels]


def upsample_levels(distances: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Phi of Eq. (5): each level's map upsampled bilinearly (align_corners=True, as the authors), (B, L, S, S)."""
    return torch.cat([F.interpolate(d[:, None], size=(size, size), mode="bilinear", align_corners=True)
                      for d in distances], dim=1)


def anomaly_map(distances: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """Anomaly score map S_AL before smoothing, Eq. (5): the level distances [(B, h_l, w_l)]
    (level_distances) upsampled by Phi and summed, (B, S, S)."""
    return upsample_levels(distances, size).sum(dim=1)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian: radius round(truncate * sigma), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def symmetric_index(length: int, radius: int) -> torch.Tensor:
    """Indices padding an axis by `radius` with scipy's 'reflect' mode (d c b a | a b c d | d c b a)."""
    index = torch.arange(-radius, length + radius)
    period = 2 * length
    index = torch.remainder(index, period)
    return torch.where(index < length, index, period - 1 - index)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter on the maps' device: (B, H, W) -> (B, H, W).

    Equals scipy.ndimage.gaussian_filter(map, sigma) per image (mode 'reflect',
    truncate 4), which the authors run on the CPU one image at a time.
    """
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel(sigma).to(device=maps.device, dtype=maps.dtype)
    radius = (kernel.numel() - 1) // 2
    _, height, width = maps.shape
    x = maps[:, None]                                                   # (B, 1, H, W)
    x = x.index_select(2, symmetric_index(height, radius).to(maps.device))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    x = x.index_select(3, symmetric_index(width, radius).to(maps.device))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return x[:, 0]


def image_score(smoothed_maps: torch.Tensor) -> torch.Tensor:
    """Image anomaly score S_AD, Eq. (6): the maximum of each smoothed map, (B, H, W) -> (B,)."""
    return smoothed_maps.flatten(1).amax(dim=1)
