"""Feature-level masking (FLM) and the generation modules G (Sec. 3.3)."""
from __future__ import annotations

import math

import torch
from torch import nn

from dataset.images import IMAGENET_MEAN, IMAGENET_STD
from model.blocks import init_weights

# HashedDraws' arithmetic: int64 modulo the prime P = 2^31 - 1. Every product is of two
# residues below P (< 2^62) and is reduced before the next operation, so nothing overflows.
HASH_PRIME = 2**31 - 1
HASH_MULTIPLIER = 48_271        # Park and Miller's minimal-standard multiplier; any residue but 0 would do
HASH_OFFSET = 1_013_904_223     # Numerical Recipes' LCG increment; any residue would do
UNIFORM_BITS = 24               # float32's significand: u = (h mod 2^24) / 2^24 is exact on every backend


class MaskDraws:
    """Where the uniform draws R of Eq. (2) come from in training: a seeded CPU generator for the
    whole batch (at test time: HashedDraws, so that an image's masks depend on nothing but the image).

    R is drawn on the CPU and then moved to the features' device, so one seed gives
    the same masks on any device. The captured training step of the fast path
    (model/engine.py: CapturedStep) subclasses it to feed its static buffers.
    """

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def uniform(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator).to(device)


class HashedDraws(MaskDraws):
    """Test-time draws R of Eq. (2) as a counter-based hash of (seed, image, call, position).

    images: the batch (B, 3, S, S), normalised; seed: any integer. The k-th call of
    `uniform` (one per level and mask, in the order restore asks) gives image b at
    position j, counted over the (1, H, W) mask,
        h = mix(absorb(absorb(absorb(absorb(seed mod P, key_b), k), j)))
        u = (h mod 2^24) / 2^24,
    with key_b = image_keys(images)[b]. u is uniform on [0, 1) in steps of 2^-24 (h is
    uniform on [0, P), P = 128 x 2^24 - 1), exactly representable in float32. So an
    image's masks depend on nothing but the seed and its pixels: not on the batch, the
    order, the device, nor on whether PyTorch or an exported ONNX graph computes them
    (only integer Add, Mul, Mod and ReduceSum, then one Cast; tests/test_generator.py).
    """

    def __init__(self, images: torch.Tensor, seed: int):
        # No generator (MaskDraws.__init__ not called): every draw is a function of its coordinates.
        self.state = absorb(seed % HASH_PRIME, image_keys(images))  # (B,)
        self.calls = 0

    def uniform(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """R (B, *rest) on `device` for the next call; B is the images' batch."""
        call = absorb(self.state.to(device), self.calls)[:, None]           # (B, 1)
        self.calls += 1
        position = torch.arange(math.prod(shape[1:]), device=device)[None]  # (1, n)
        h = mix(absorb(call, position))                                     # (B, n)
        return ((h % 2**UNIFORM_BITS).to(torch.float32) / 2**UNIFORM_BITS).view(shape)


def mix(x: torch.Tensor) -> torch.Tensor:
    """x -> (x + HASH_OFFSET)^5 mod P, elementwise on int64 residues in [0, P).

    A permutation of [0, P), since 5 is coprime with P - 1, and far from linear: the
    nonlinear round of HashedDraws. Only Add, Mul and Mod (integer, non-negative), which
    PyTorch on CPU and CUDA, ONNX and onnxruntime compute exactly alike.
    """
    x = (x + HASH_OFFSET) % HASH_PRIME
    squared = x * x % HASH_PRIME
    return squared * squared % HASH_PRIME * x % HASH_PRIME


def absorb(state: torch.Tensor | int, value: torch.Tensor | int) -> torch.Tensor:
    """The hash state after taking in `value`: mix(state * HASH_MULTIPLIER + value mod P).

    state and value are residues in [0, P), tensors (broadcast together) or Python ints.
    """
    return mix((state * HASH_MULTIPLIER + value) % HASH_PRIME)


def image_keys(images: torch.Tensor) -> torch.Tensor:
    """A hash of each image's pixels, (B, 3, S, S) normalised -> (B,) int64 residues mod P.

    The uint8 values v are recovered from the normalised image, round(255 (x std + mean))
    (clamped to [0, 255]), so float rounding in the normalisation changes nothing. The key
    is sum_i v_i w_i mod P over the positions i (channel, row, column) with pseudo-random
    weights w_i = mix(mix(i)). Each row's sum is reduced before the rows are added:
    a term is below 2^8 P < 2^39, a row of 3 x S terms below 2^63 up to S = 2^22.
    """
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    pixels = ((images.float() * std + mean) * 255).clamp(0, 255).round().to(torch.int64)  # (B, 3, S, S)
    _, channels, height, width = pixels.shape
    position = torch.arange(channels * height * width, device=images.device).view(channels, height, width)
    rows = (pixels * mix(mix(position))).sum(dim=(1, 3)) % HASH_PRIME  # (B, S)
    return rows.sum(dim=1) % HASH_PRIME


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


class Generators(nn.ModuleList):
    """G^1, G^2, G^3, finest level first, applied together to the masked levels, Eq. (3); empty without FLM.

    One module for the three levels, so that COMPILE compiles them as one graph: compiled one
    by one, the three shapes of G's one forward would be three sets of Dynamo's compilations
    of the same code, which its recompile limit (8 per code object) does not hold.
    """

    def forward(self, features: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """f_S^l (B, C_l, H_l, W_l) and M^l (B, 1, H_l, W_l) -> f_G^l = G^l(f_S^l * M^l) (B, C_l, H_l, W_l)."""
        return [g(f * m) for g, f, m in zip(self, features, masks)]
