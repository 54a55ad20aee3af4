"""Networks, FLM, loss and anomaly map (issue: foundation)."""
import math
from urllib.error import URLError

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from model.generator import MaskDraws, flm_mask
from model.loss import anomaly_map, distillation_loss, gaussian_blur, image_score, level_distances
from model.teacher import Teacher
from tests.helpers import model_for, through
from utils.errors import InputError


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def wide():
    return model_for("wide_resnet50_2")


def test_wide_resnet_parameter_counts(wide):
    assert count(wide.bottleneck) == 58_885_120
    assert count(wide.student) == 24_917_504
    assert count(wide.generators) == 24_776_192
    assert len(wide.generators) == 3


@pytest.mark.parametrize("backbone, channels", [
    ("resnet18", (64, 128, 256)),
    ("resnet50", (256, 512, 1024)),
    ("wide_resnet50_2", (256, 512, 1024)),
])
def test_output_shapes_follow_the_backbone(backbone, channels):
    with torch.device("meta"):  # shapes without values: nothing to initialise or compute
        model = model_for(backbone)
        images = torch.randn(2, 3, 64, 64)
        teacher, restored = through(model, images, images.flip(-1))
    expected = [(2, c, 64 // s, 64 // s) for c, s in zip(channels, (4, 8, 16))]
    assert [tuple(f.shape) for f in teacher] == expected
    assert [tuple(f.shape) for f in restored] == expected
    assert [g.conv1.in_channels for g in model.generators] == list(channels)


def test_generator_weights_are_kaiming_normal_fan_out_and_biases_keep_the_default(wide):
    # The authors' decoder init loop reaches G's convs: weights N(0, 2 / fan_out),
    # fan_out = C x 3 x 3. PyTorch's default (kaiming-uniform, a = sqrt(5)) has a
    # std sqrt(6) times smaller and no values beyond 1.73 std.
    for generator, channels in zip(wide.generators, (256, 512, 1024)):
        for conv in (generator.conv1, generator.conv2):
            weight = conv.weight.detach().double()
            std = math.sqrt(2 / (channels * 9))
            # n >= 256 x 256 x 9 = 589,824 weights: the sample std's relative standard
            # error is 1 / sqrt(2n) < 0.001, and that of the tail share below 0.0003.
            assert weight.std().item() == pytest.approx(std, rel=0.01)
            assert weight.mean().item() == pytest.approx(0, abs=0.01 * std)
            assert (weight.abs() > 2 * std).double().mean().item() == pytest.approx(0.0455, abs=0.003)
            # Bias: PyTorch's default, uniform in +-1 / sqrt(fan_in), fan_in = C x 3 x 3.
            bound = 1 / math.sqrt(channels * 9)
            bias = conv.bias.detach().double()
            assert bias.abs().max().item() <= bound and bias.abs().max().item() > 0.9 * bound
            # >= 256 uniform values: the std's relative standard error is under 0.03.
            assert bias.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)


def test_teacher_is_frozen_and_optimiser_sees_exactly_the_trained_parts(wide):
    assert not any(p.requires_grad for p in wide.teacher.parameters())
    wide.train()
    assert not wide.teacher.training and wide.student.training
    trained = {id(p) for p in wide.trainable_parameters()}
    expected = {id(p) for part in (wide.bottleneck, wide.student, wide.generators) for p in part.parameters()}
    assert trained == expected
    assert not trained & {id(p) for p in wide.teacher.parameters()}
    teacher, _ = through(wide, torch.randn(1, 3, 64, 64))
    assert not any(f.requires_grad for f in teacher)


def test_teacher_never_builds_layer4():
    teacher = model_for("resnet18").teacher
    assert not hasattr(teacher, "layer4") and not hasattr(teacher, "fc")


def test_flm_off_builds_no_generator_and_compares_the_student_directly():
    torch.manual_seed(0)
    model = model_for("resnet18", flm=False).eval()
    assert len(model.generators) == 0
    images = torch.randn(2, 3, 64, 64)
    _, restored = through(model, images)
    direct = model.student(model.bottleneck(model.teacher(images)))
    assert all(torch.equal(a, b) for a, b in zip(restored, direct))


def test_ilm_input_changes_the_student_input_but_not_the_target():
    torch.manual_seed(0)
    model = model_for("resnet18", flm_ratio=0.0).eval()
    images = torch.randn(2, 3, 64, 64)
    target_clean, restored_clean = through(model, images)
    target_ilm, restored_ilm = through(model, images, images.flip(-1))
    for a, b in zip(target_clean, target_ilm):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(restored_clean[0], restored_ilm[0])


def test_flm_mask_fraction_and_determinism():
    features = torch.zeros(8, 4, 32, 32)
    masks = [flm_mask(features, 0.2, MaskDraws(torch.Generator().manual_seed(s))) for s in range(20)]
    zeroed = 1 - torch.stack(masks).mean().item()
    assert abs(zeroed - 0.2) < 0.01
    assert masks[0].shape == (8, 1, 32, 32)
    again = flm_mask(features, 0.2, MaskDraws(torch.Generator().manual_seed(0)))
    assert torch.equal(masks[0], again)
    assert not torch.equal(masks[0], masks[1])
    # Masks differ between samples of a batch (drawn per sample).
    assert not torch.equal(masks[0][0], masks[0][1])


def test_restore_masks_the_student_features_and_applies_g():
    model = model_for("resnet18")
    student = [torch.randn(2, c, s, s) for c, s in zip((64, 128, 256), (8, 4, 2))]
    restored = model.restore(student, MaskDraws(torch.Generator().manual_seed(3)))
    masks = MaskDraws(torch.Generator().manual_seed(3))
    for g, f, f_g in zip(model.generators, student, restored):
        m = flm_mask(f, 0.2, masks)
        torch.testing.assert_close(f_g, g.conv2(torch.relu(g.conv1(f * m))))
    assert torch.all(flm_mask(student[0], 0.0, masks) == 1)  # lambda 0: nothing masked


def test_same_mask_seed_gives_same_restored_features():
    model = model_for("resnet18").eval()
    images = torch.randn(2, 3, 64, 64)
    first = through(model, images, None, MaskDraws(torch.Generator().manual_seed(5)))[1]
    second = through(model, images, None, MaskDraws(torch.Generator().manual_seed(5)))[1]
    third = through(model, images, None, MaskDraws(torch.Generator().manual_seed(6)))[1]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], third[0])


def features(seed, shapes=((2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4))):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=generator) for s in shapes]


def test_loss_is_zero_for_identical_features_and_positive_otherwise():
    a, b = features(0), features(1)
    assert distillation_loss(a, a).item() == pytest.approx(0, abs=1e-6)
    assert distillation_loss(a, b).item() > 0.5
    # Scaling a feature map does not change the cosine loss.
    assert distillation_loss(a, [2 * f for f in a]).item() == pytest.approx(0, abs=1e-6)


def test_loss_equals_its_definition():
    a, b = features(0), features(1)
    per_level = [(1 - torch.nn.functional.cosine_similarity(t.flatten(1), g.flatten(1))).mean() for t, g in zip(a, b)]
    torch.testing.assert_close(distillation_loss(a, b), sum(per_level))


def test_anomaly_map_zero_for_identical_and_levels_select():
    a, b = features(0), features(1)
    assert anomaly_map(level_distances(a, a), 64).abs().max().item() < 1e-5
    full = anomaly_map(level_distances(a, b), 64)
    assert full.shape == (2, 64, 64) and full.min().item() > 0
    singles = [anomaly_map(level_distances(a, b, levels=(level,)), 64) for level in (1, 2, 3)]
    torch.testing.assert_close(full, sum(singles))
    torch.testing.assert_close(anomaly_map(level_distances(a, b, levels=(1, 2)), 64), singles[0] + singles[1])
    assert not torch.allclose(singles[0], singles[2])


def test_anomaly_map_matches_its_definition_at_a_corner():
    a, b = features(0), features(1)
    # With align_corners=True the corner pixel of the upsampled map is the corner of each level.
    expected = sum(1 - torch.nn.functional.cosine_similarity(t[:, :, 0, 0], g[:, :, 0, 0]) for t, g in zip(a, b))
    torch.testing.assert_close(anomaly_map(level_distances(a, b), 64)[:, 0, 0], expected)


@pytest.mark.parametrize("size", [64, 20, 7])
def test_gaussian_blur_equals_scipy(size):
    maps = torch.rand(3, size, size, dtype=torch.float64)
    ours = gaussian_blur(maps, sigma=4).numpy()
    theirs = np.stack([gaussian_filter(m, sigma=4) for m in maps.numpy()])
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_image_score_is_the_maximum():
    maps = torch.rand(4, 16, 16)
    torch.testing.assert_close(image_score(maps), maps.amax(dim=(1, 2)))


def test_offline_imagenet_weights_give_one_clear_message(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise URLError("no route to host")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(InputError) as error:
        model_for("resnet18", weights="imagenet")
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "checkpoints") in message
    assert "--weights=none" in message


def test_weights_from_a_state_dict_file(tmp_path):
    source = model_for("resnet18").teacher
    path = tmp_path / "teacher.pth"
    torch.save(source.state_dict(), path)
    loaded = model_for("resnet18", weights=str(path)).teacher
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    with pytest.raises(InputError, match="does not fit resnet50"):
        model_for("resnet50", weights=str(path))
    with pytest.raises(InputError, match="Could not read"):
        model_for("resnet18", weights=str(tmp_path / "missing.pth"))


def _truncated_state_dict(path):
    torch.save({"weight": torch.zeros(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize("content", ["text", "whole model", "truncated state dict"])
def test_weights_file_that_is_no_state_dict_gives_one_sentence(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content == "text":
        path.write_text("hello, these are not weights\n")
    elif content == "whole model":
        torch.save(Teacher("resnet18", weights=None), path)
    else:
        _truncated_state_dict(path)
    with pytest.raises(InputError) as error:
        Teacher("resnet18", weights=str(path))
    message = str(error.value)
    assert message.startswith(f"Could not read the backbone weights file {path} as a state dict (")
    assert message.endswith("save the weights with torch.save(model.state_dict(), path), not the whole model.")
    assert "\n" not in message


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_hub_cache_names_the_file_to_delete(tmp_path, monkeypatch, damage):
    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must not be downloaded again")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    cached = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir()
    if damage == "garbage":
        cached.write_bytes(b"<html>503 Service Unavailable</html>")
    else:
        _truncated_state_dict(cached)
    with pytest.raises(InputError) as error:
        Teacher("resnet18", weights="imagenet")
    message = str(error.value)
    assert message.startswith(f"The cached ImageNet weights file {cached} is damaged (")
    assert "delete it" in message and "\n" not in message


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(InputError, match="Unknown backbone 'vgg16'; choose one of resnet18, resnet50, wide_resnet50_2"):
        model_for("vgg16")
