"""Feature-level masking (FLM) and the generation modules G (Sec. 3.3)."""
from __future__ import annotations

import torch
from torch import nn

from model.blocks import init_weights


class MaskDraws:
    """Where the uniform draws R of Eq. (2) come from: a seeded CPU generator for the whole
    batch, or a list of one per sample (at test time, so that an image's masks depend on
    nothing but the image).

    R is drawn on the CPU and then moved to the features' device, so one seed gives
    the same masks on any device. The captured training step of the fast path
    (model/engine.py: CapturedStep) subclasses it to feed its static buffers.
    """

    def __init__(self, generator: torch.Generator | list[torch.Generator]):
        self.generator = generator

    def uniform(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if isinstance(self.generator, list):  # sample b's R from generator b
            r = torch.cat([torch.rand((1, *shape[1:]), generator=generator) for generator in self.generator])
        else:
            r = torch.rand(shape, generator=self.generator)
        return r.to(device)


def flm_mask(features: torch.Tensor, ratio: float, draws: MaskDraws | None = None) -> torch.Tensor:
    """Feature-level mask M^l, Eq. (2).

    features: (B, C, H, W); returns M (B, 1, H, W) of 0/1 in the features' dtype: each
    spatial position is zeroed across all channels with probability `ratio` (lambda),
    drawn per sample, R ~ U(0, 1) from `draws` (None: the global generator of the
    features' device).
    """
    batch, _, height, width = features.shape
    shape = (batch, 1, height, width)
    r = torch.rand(shape, device=features.device) if draws is None else draws.uniform(shape, features.device)
    return (r >= ratio).to(features.dtype)


class Generator(nn.Module):
    """G^l = W2(ReLU(W1(.))), two 3x3 convs with bias keeping C channels, Eq. (3).

    Weights are Kaiming-normal (fan_out, relu), std sqrt(2 / (9 C)), like every conv
    of B and S: the authors build G inside their decoder, before its init loop runs.
    Biases keep PyTorch's default, uniform in +-1 / sqrt(9 C) (authors' implementation).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        init_weights(self)

    def forward(self, masked: torch.Tensor) -> torch.Tensor:
        """f_S^l * M^l (B, C, H, W) -> f_G^l (B, C, H, W), Eq. (3)."""
        return self.conv2(self.relu(self.conv1(masked)))
