"""Feature-level masking (FLM) and the generation modules G (Sec. 3.3)."""
from __future__ import annotations

import torch
from torch import nn

from model.blocks import init_weights


# Where FLM's masks are drawn from: one generator for the whole batch, one per sample
# (test time: each image's masks then depend on nothing but that image), or None for
# PyTorch's global generator.
MaskGenerator = torch.Generator | list[torch.Generator] | None


def flm_mask(features: torch.Tensor, ratio: float, generator: MaskGenerator = None) -> torch.Tensor:
    """Feature-level mask M^l, Eq. (2).

    features: (B, C, H, W); returns M (B, 1, H, W) of 0/1 in the features' dtype: each
    spatial position is zeroed across all channels with probability `ratio` (lambda),
    drawn per sample. R ~ U(0, 1) is drawn on the generator's device (the CPU when
    none is given and the features live there), then moved, so seeded CPU generators
    give the same masks on any device. With a list of B generators, sample b's R comes
    from generator b.
    """
    batch, _, height, width = features.shape
    if isinstance(generator, list):
        r = torch.cat([torch.rand((1, 1, height, width), generator=g, device=g.device) for g in generator])
    else:
        device = generator.device if generator is not None else features.device
        r = torch.rand((batch, 1, height, width), generator=generator, device=device)
    return (r >= ratio).to(device=features.device, dtype=features.dtype)


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

    def forward(self, f_s: torch.Tensor, ratio: float, generator: MaskGenerator = None) -> torch.Tensor:
        """f_S^l (B, C, H, W) -> f_G^l = G(f_S^l * M^l) (B, C, H, W), Eq. (2)-(3)."""
        return self.conv2(self.relu(self.conv1(f_s * flm_mask(f_s, ratio, generator))))
