"""Residual stages built from torchvision's own ResNet blocks, shared by the bottleneck and the student."""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

Block = type[BasicBlock] | type[Bottleneck]


def conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 conv (no bias) + BN + ReLU, the bottleneck's down-sampling unit."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def residual_stage(block: Block, in_channels: int, planes: int, blocks: int, width_per_group: int,
                   upsample: bool = False) -> nn.Sequential:
    """`blocks` torchvision blocks whose first one changes the resolution by 2.

    upsample=False: a ResNet stage, first block stride 2 with a conv1x1 stride 2 shortcut.
    upsample=True: the same stage run in reverse (RD4AD's student): the stride-2 conv of the
    first block and of its shortcut become ConvTranspose2d(kernel 2, stride 2).
    """
    out_channels = planes * block.expansion
    if upsample:
        shortcut_conv = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False)
    else:
        shortcut_conv = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
    shortcut = nn.Sequential(shortcut_conv, nn.BatchNorm2d(out_channels))
    first = block(in_channels, planes, stride=1 if upsample else 2, downsample=shortcut,
                  base_width=width_per_group)
    if upsample:
        # The block's strided conv: conv2 of a Bottleneck, conv1 of a BasicBlock.
        name = "conv2" if block is Bottleneck else "conv1"
        conv = getattr(first, name)
        setattr(first, name, nn.ConvTranspose2d(conv.in_channels, conv.out_channels, 2, stride=2, bias=False))
    rest = [block(out_channels, planes, base_width=width_per_group) for _ in range(blocks - 1)]
    return nn.Sequential(first, *rest)


def init_weights(module: nn.Module) -> None:
    """torchvision's ResNet initialisation, as RD4AD and the authors use it.

    Kaiming-normal (fan_out) for Conv2d weights, BN weight 1 and bias 0; conv biases (G's)
    and ConvTranspose2d keep PyTorch's default, as in the authors' code (their loop only
    matches nn.Conv2d and sets no conv bias).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
