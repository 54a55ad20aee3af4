"""RD++'s multi-projection layer: one projection per teacher level, between teacher and bottleneck.

RD++ (Tien et al., CVPR 2023) feeds the bottleneck the projected teacher features
P^l(f_T^l) instead of f_T^l, at training and at test time, while the student
still restores the unprojected f_T^l.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_norm_act(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (stride 1, padding 1, with bias) + InstanceNorm (no affine, no running
    statistics) + LeakyReLU (slope 0.01): PyTorch's defaults, as the authors build it."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.InstanceNorm2d(out_channels),
        nn.LeakyReLU(),
    )


class Projection(nn.Module):
    """P^l: four conv_norm_act units, channels C -> C/2 -> C/4 -> C/2 -> C_out (authors' implementation).

    The last unit too ends in InstanceNorm and LeakyReLU, so each channel of the output is
    normalised over its H x W positions before the activation. Weights keep PyTorch's
    default initialisation: the authors run no init loop over this module.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        half, quarter = in_channels // 2, in_channels // 4
        self.layers = nn.Sequential(
            conv_norm_act(in_channels, half),
            conv_norm_act(half, quarter),
            conv_norm_act(quarter, half),
            conv_norm_act(half, out_channels),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """f_T^l (B, C, H, W) -> P^l(f_T^l) (B, C_out, H, W)."""
        return self.layers(features)


class MultiProjection(nn.Module):
    """P = (P^1, P^2, P^3), one Projection per teacher level, each keeping its level's channels.

    The authors hard-code the wide net's channels (256, 512, 1024); here they follow the
    teacher, so a resnet18 teacher gets (64, 128, 256).
    """

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.levels = nn.ModuleList(Projection(c, c) for c in channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """[f_T^l (B, C_l, H_l, W_l)] -> [P^l(f_T^l)], same shapes, finest level first."""
        return [projection(f) for projection, f in zip(self.levels, features)]
