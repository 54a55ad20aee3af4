"""Bottleneck B: RD4AD's one-class bottleneck embedding (Sec. 3.2, Eq. (1)) and DRD's cascade fusion (MFCF)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck as BottleneckBlock

from model.blocks import Block, conv_bn_relu, init_weights, residual_stage

# Planes of the bottleneck's residual stage, ResNet's layer4 width (RD4AD; DRD keeps it).
STAGE_PLANES = 512


def compression_stage(block: Block, in_channels: int, width_per_group: int) -> nn.Sequential:
    """The residual stage both bottlenecks end with: (in_channels, h, w) -> (512 x expansion, h/2, w/2).

    First block stride 2 with a conv1x1 stride-2 + BN shortcut.
    """
    # 3 Bottleneck blocks for the ResNet-50 family, 2 BasicBlocks for ResNet-18 (RD4AD).
    blocks = 3 if block is BottleneckBlock else 2
    return residual_stage(block, in_channels, STAGE_PLANES, blocks, width_per_group)


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
        self.stage = compression_stage(block, 3 * c3, width_per_group)
        self.out_channels = STAGE_PLANES * block.expansion
        init_weights(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[f1, f2, f3] teacher features -> f_B (B, 512 x expansion, H/32, W/32)."""
        f1, f2, f3 = features
        return self.stage(torch.cat([self.level1(f1), self.level2(f2), f3], dim=1))


class CascadeFusionBottleneck(nn.Module):
    """DRD's multi-feature cascade fusion (MFCF): each level is fused into the next in turn.

    For the wide net: layer1 (256, H/4) -> stride-2 conv -> (512, H/8); with layer2
    -> (1024, H/8) -> stride-2 conv -> (2048, H/16); with layer3 -> (3072, H/16)
    -> stride-1 conv -> (1024, H/16) -> the residual stage of OneClassBottleneck
    -> (2048, H/32). 90,344,448 parameters (DRD's public implementation, without
    its unused modules). Every width follows the teacher's channels and block type.
    """

    def __init__(self, block: Block, channels: tuple[int, int, int], width_per_group: int):
        super().__init__()
        c1, c2, c3 = channels
        self.level1 = conv_bn_relu(c1, c2, 2)
        self.level2 = conv_bn_relu(2 * c2, 2 * c3, 2)
        self.level3 = conv_bn_relu(3 * c3, c3, 1)
        self.stage = compression_stage(block, c3, width_per_group)
        self.out_channels = STAGE_PLANES * block.expansion
        init_weights(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[f1, f2, f3] teacher features -> f_B (B, 512 x expansion, H/32, W/32)."""
        f1, f2, f3 = features
        x = self.level2(torch.cat([self.level1(f1), f2], dim=1))  # (B, 2 C3, H/16, W/16)
        x = self.level3(torch.cat([x, f3], dim=1))                # (B, C3, H/16, W/16)
        return self.stage(x)
