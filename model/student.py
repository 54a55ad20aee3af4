"""Student S: the teacher's layer3..layer1 run in reverse (Sec. 3.3)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck as BottleneckBlock

from model.blocks import Block, init_weights, residual_stage


class ReversedStudent(nn.Module):
    """Three up-sampling stages mirroring the teacher: f_B -> [f_S^1, f_S^2, f_S^3].

    For the wide net: (2048, H/32) -> (1024, H/16) -> (512, H/8) -> (256, H/4), stages of
    [3, 4, 6] Bottleneck blocks (planes 256, 128, 64); ResNet-18 uses [2, 2, 2] BasicBlocks.
    """

    def __init__(self, block: Block, in_channels: int, width_per_group: int):
        super().__init__()
        depths = (3, 4, 6) if block is BottleneckBlock else (2, 2, 2)
        stages = []
        for planes, depth in zip((256, 128, 64), depths):
            stages.append(residual_stage(block, in_channels, planes, depth, width_per_group, upsample=True))
            in_channels = planes * block.expansion
        self.stages = nn.ModuleList(stages)
        init_weights(self)

    def forward(self, f_b: torch.Tensor) -> list[torch.Tensor]:
        """f_B (B, C, H/32, W/32) -> [f_S^1 (H/4), f_S^2 (H/8), f_S^3 (H/16)], finest level first."""
        features = []
        x = f_b
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features[::-1]
