"""Test-time FLM masks hashed from (seed, image, call, position): HashedDraws."""
import numpy as np
import pytest
import torch
from scipy import stats

from dataset.images import to_tensor
from model.generator import HashedDraws, flm_mask

CPU = torch.device("cpu")


def pixels(count, size=32, seed=0):
    """`count` random uint8 images (count, size, size, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def normalised(images):
    """uint8 images (B, S, S, 3) -> (B, 3, S, S) as the datasets feed the model."""
    return torch.stack([to_tensor(image) for image in images])


def draws(images, seed=111, shapes=((8, 8), (4, 4), (2, 2))):
    """The uniforms of successive calls, one per shape: [(B, 1, h, w)]."""
    hashed = HashedDraws(images, seed)
    return [hashed.uniform((len(images), 1, *shape), CPU) for shape in shapes]


def reference(images, seed, shapes):
    """HashedDraws rewritten with Python integers in NumPy object arrays, which cannot overflow:
    images (B, S, S, 3) uint8 -> [(B, 1, h, w)] float64."""
    prime, multiplier, offset = 2**31 - 1, 48_271, 1_013_904_223
    mix = np.frompyfunc(lambda x: pow(int(x) + offset, 5, prime), 1, 1)

    def absorb(state, value):
        return mix((state * multiplier + value) % prime)

    values = images.transpose(0, 3, 1, 2).reshape(len(images), -1).astype(object)  # (B, 3 S S), (c, y, x) order
    weights = mix(mix(np.arange(values.shape[1]).astype(object)))
    keys = values.dot(weights) % prime                                               # (B,)
    state = absorb(seed % prime, keys)
    out = []
    for call, (height, width) in enumerate(shapes):
        counted = absorb(state, call)[:, None]
        h = mix(absorb(counted, np.arange(height * width).astype(object)[None]))      # (B, h w)
        out.append((h % 2**24).astype(np.float64).reshape(len(images), 1, height, width) / 2**24)
    return out


def test_uniforms_equal_a_numpy_reimplementation():
    images = pixels(3)
    shapes = ((8, 8), (4, 4), (2, 2), (8, 8))
    for seed in (111, -5, 2**40):
        for ours, theirs in zip(draws(normalised(images), seed, shapes), reference(images, seed, shapes)):
            np.testing.assert_array_equal(ours.numpy(), theirs)


def test_an_image_gets_its_masks_alone_or_in_any_batch_and_order():
    images = normalised(pixels(4))
    together = draws(images)
    shuffled = draws(images[[2, 0, 3, 1, 2]])
    for b in range(4):
        alone = draws(images[b:b + 1])
        for call in range(3):
            assert torch.equal(alone[call][0], together[call][b])
    for call in range(3):
        assert torch.equal(shuffled[call], together[call][[2, 0, 3, 1, 2]])


def test_different_images_seeds_and_calls_give_different_masks():
    images = pixels(2)
    changed = images.copy()
    changed[1, 5, 7, 2] ^= 1  # one pixel's lowest bit
    first, second = (draws(normalised(batch)) for batch in (images, changed))
    assert torch.equal(first[0][0], second[0][0])
    assert not torch.equal(first[0][1], second[0][1])
    assert not torch.equal(first[0][0], first[0][1])
    assert not torch.equal(first[0], draws(normalised(images), seed=112)[0])
    calls = draws(normalised(images), shapes=((8, 8), (8, 8)))
    assert not torch.equal(calls[0], calls[1])


def test_the_key_survives_float_rounding_of_the_normalisation():
    images = normalised(pixels(2))
    nudged = images * (1 + 1e-6) + 1e-6
    for ours, theirs in zip(draws(images), draws(nudged)):
        assert torch.equal(ours, theirs)


def test_uniforms_are_uniform_and_neighbours_independent():
    """Chi-square tests on 2^18 draws (16 images, 4 calls of 64 x 64): the marginal over 64
    bins, and pairs of horizontal neighbours, of successive calls and of images with keys
    one pixel apart, over 8 x 8 bins."""
    images = pixels(16, size=32, seed=1)
    images[1::2] = images[::2]
    images[1::2, 0, 0, 0] ^= 1  # odd images: their even neighbour but one bit
    u = torch.stack(draws(normalised(images), shapes=((64, 64),) * 4), dim=1)[:, :, 0]  # (16, 4, 64, 64)
    u = u.double().numpy()
    assert 0 <= u.min() and u.max() < 1
    counts = np.histogram(u, bins=64, range=(0, 1))[0]
    assert stats.chisquare(counts).pvalue > 1e-3
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    for a, b in ((u[..., :-1], u[..., 1:]), (u[:, :-1], u[:, 1:]), (u[::2], u[1::2])):
        pairs = np.histogram2d(a.ravel(), b.ravel(), bins=8, range=((0, 1), (0, 1)))[0]
        assert stats.chisquare(pairs.ravel()).pvalue > 1e-3
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01


def test_fraction_of_zeroed_positions_is_the_ratio():
    features = torch.ones(32, 8, 32, 32)
    mask = flm_mask(features, 0.1, HashedDraws(normalised(pixels(32)), 111))
    assert mask.shape == (32, 1, 32, 32)
    assert abs((mask == 0).float().mean().item() - 0.1) < 0.005


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_draws_equal_cpu_draws():
    images = normalised(pixels(3))
    cuda = HashedDraws(images.to(torch.device("cuda")), 111)
    for ours, shape in zip(draws(images), ((8, 8), (4, 4), (2, 2))):
        assert torch.equal(cuda.uniform((3, 1, *shape), torch.device("cuda")).cpu(), ours)
