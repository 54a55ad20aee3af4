"""Bottleneck B, RD4AD's one-class bottleneck embedding (Sec. 3.2, Eq. (1))."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck as BottleneckBlock

from model.blocks import Block, conv_bn_relu, init_weights, residual_stage


class OneClassBottleneck(nn.Module):
    """Fuses the teacher's three levels in parallel and compresses them to one map.

    For the wide net: layer1 (256, H/4) -> two stride-2 convs -> (1024, H/16);
    layer2 (512, H/8) -> one stride-2 conv -> (1024, H/16); concatenated with
    layer3 (1024, H/16) -> (3072, H/16) -> one residual stage -> (2048, H/32).
    Every width follows the teacher's channels and block type (Table 8).
    """

    def __init__(self, block: Block, channels: tuple[int, int, int], width_per_group: int):
        super().__init__()
        c1, c2, c3 = channels
        self.level1 = nn.Sequential(conv_bn_relu(c1, c2, 2), conv_bn_relu(c2, c3, 2))
        self.level2 = conv_bn_relu(c2, c3, 2)
        # 3 Bottleneck blocks for the ResNet-50 family, 2 BasicBlocks for ResNet-18 (RD4AD).
        blocks = 3 if block is BottleneckBlock else 2
        self.stage = residual_stage(block, 3 * c3, 512, blocks, width_per_group)
        self.out_channels = 512 * block.expansion
        init_weights(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[f1, f2, f3] teacher features -> f_B (B, 512 x expansion, H/32, W/32)."""
        f1, f2, f3 = features
        return self.stage(torch.cat([self.level1(f1), self.level2(f2), f3], dim=1))
