"""The ONNX export: the graph scores as PyTorch does, in any batch; the README's snippet scores
with onnxruntime, NumPy and Pillow alone; check_export catches a mismatched pair."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from dataset.images import load_image, to_tensor
from model.engine import score_images
from model.export import Decision, check_export, export_onnx, graph_normalized_scores
from model.settings import Scoring
from model.generator import HashedDraws
from tests.helpers import model_for
from utils import metrics
from utils.errors import InputError

SIZE = 64
SEED = 111
README = Path(__file__).resolve().parents[1] / "README.md"
SETTINGS = {"BACKBONE": "resnet18", "WEIGHTS": None, "IMAGE_SIZE": SIZE, "SCORE_LEVELS": [1, 2, 3]}


def random_images(count, seed=0):
    """`count` normalised images (count, 3, S, S) made from random uint8 pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)
    return torch.stack([to_tensor(image) for image in pixels])


@torch.no_grad()
def torch_path(export, images):
    """Maps and scores as predict computes them (eval mode, HashedDraws masks), NumPy."""
    scores, maps = score_images(export["model"], images, export["scoring"], HashedDraws(images, SEED))
    return maps.numpy(), scores.numpy()


def run_onnx(export, images):
    session = onnxruntime.InferenceSession(export["onnx"], providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})


def exported(folder, image_score, eval_masks=1):
    """A random-weight resnet18 MRKD at 64 px exported as folder/bottle.onnx, with the threshold,
    low and high of six random test images."""
    torch.manual_seed(0)
    model = model_for("resnet18").eval()
    scoring = Scoring((1, 2, 3), 4.0, eval_masks, image_score)
    export = {"model": model, "scoring": scoring}
    scores = torch_path(export, random_images(6, seed=1))[1]
    decision = Decision(float(np.median(scores)), float(scores.min()), float(scores.max()))
    onnx_path = folder / "bottle.onnx"
    json_path = export_onnx(model, scoring, decision, SEED, SIZE, SETTINGS, onnx_path)
    return {**export, "decision": decision, "onnx": str(onnx_path), "json": json_path}


@pytest.fixture(scope="module")
def max_export(tmp_path_factory):
    return exported(tmp_path_factory.mktemp("max"), "max")


def snippet_lines():
    """The lines between the ```python fences of the README's section on the ONNX export, as they are."""
    section = README.read_text().split("### Scoring without PyTorch: the ONNX export", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_snippet_scores_with_onnxruntime_alone_as_pytorch_does(max_export, tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    for path in (max_export["onnx"], max_export["json"]):
        shutil.copy(path, folder)
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (90, 70, 3), dtype=np.uint8)).save(
        folder / "new_bottle.png")
    # PyTorch and this repository cannot be imported: the snippet needs onnxruntime, NumPy and Pillow only.
    blocked = ("torch", "torchvision", "model", "dataset", "utils", "main", "tests")
    script = (f"import sys\nsys.modules.update(dict.fromkeys({blocked!r}, None))\n"
              + snippet_lines() + "np.save('x.npy', x)\n")
    (folder / "score.py").write_text(script)
    done = subprocess.run([sys.executable, "-I", "score.py"], cwd=folder, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    found = re.fullmatch(r"score (\S+) normalized (\S+) anomalous (True|False)\n", done.stdout)
    assert found, done.stdout

    pixels = load_image(folder / "new_bottle.png", SIZE)
    images = to_tensor(pixels)[None]
    np.testing.assert_array_equal(np.load(folder / "x.npy"), images[0].numpy().transpose(1, 2, 0))
    score = torch_path(max_export, images)[1]
    decision = max_export["decision"]
    normalized = metrics.normalized_scores(score, decision.threshold, decision.low, decision.high)
    np.testing.assert_allclose(float(found[1]), score[0], rtol=1e-4)
    np.testing.assert_allclose(float(found[2]), normalized[0], rtol=1e-4)
    assert found[3] == str(bool(score[0] >= decision.threshold))


def test_batch_is_dynamic_and_outputs_equal_the_pytorch_path(max_export):
    images = random_images(3, seed=3)
    maps, scores, normalized = run_onnx(max_export, images)
    assert maps.shape == (3, SIZE, SIZE) and scores.shape == (3,) and normalized.shape == (3,)
    for b in range(3):
        alone = run_onnx(max_export, images[b:b + 1])
        for together, single in zip((maps, scores, normalized), alone):  # equal but for float rounding
            np.testing.assert_allclose(single[0], together[b], rtol=1e-4, atol=1e-5)
    torch_maps, torch_scores = torch_path(max_export, images)
    np.testing.assert_allclose(maps, torch_maps, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores, torch_scores, rtol=1e-4)
    decision = max_export["decision"]
    np.testing.assert_allclose(normalized, metrics.normalized_scores(torch_scores, decision.threshold, decision.low,
                                                                     decision.high), rtol=1e-4, atol=1e-6)


def test_refined_score_with_two_masks_equals_the_pytorch_path(tmp_path):
    export = exported(tmp_path, "refined", eval_masks=2)
    images = random_images(2, seed=4)
    scores = run_onnx(export, images)[1]
    torch_scores = torch_path(export, images)[1]
    np.testing.assert_allclose(scores, torch_scores, rtol=1e-4)
    assert not np.allclose(scores, run_onnx(export, images)[0].reshape(2, -1).max(axis=1))  # not the plain maximum


def test_hashed_masks_are_bit_identical_in_onnxruntime(tmp_path):
    class Uniforms(torch.nn.Module):
        def forward(self, images):
            draws = HashedDraws(images, 111)
            return tuple(draws.uniform((images.shape[0], 1, side, side), images.device) for side in (16, 8, 16))

    images = random_images(4, seed=5)
    torch.onnx.export(Uniforms().eval(), (images[:2],), tmp_path / "uniforms.onnx", input_names=["images"], dynamo=True,
                      opset_version=18, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    session = onnxruntime.InferenceSession(tmp_path / "uniforms.onnx", providers=["CPUExecutionProvider"])
    for ours, theirs in zip(Uniforms()(images), session.run(None, {"images": images.numpy()})):
        np.testing.assert_array_equal(ours.numpy(), theirs)


def test_json_describes_the_preprocessing_and_the_decision(max_export):
    description = check_export(max_export["onnx"], max_export["json"])
    decision = max_export["decision"]
    assert description["image_size"] == SIZE and description["resize"] == "lanczos"
    assert description["mean"] == [0.485, 0.456, 0.406] and description["std"] == [0.229, 0.224, 0.225]
    assert (description["threshold"], description["low"], description["high"]) == \
        (decision.threshold, decision.low, decision.high)
    assert description["threshold_rule"] == "f1_test" and description["settings"] == SETTINGS
    assert description["scoring"]["IMAGE_SCORE"] == "max" and description["onnx_file"] == "bottle.onnx"


def test_check_export_refuses_a_pair_that_does_not_match(max_export, tmp_path):
    onnx_path = tmp_path / "other.onnx"
    onnx_path.write_bytes(Path(max_export["onnx"]).read_bytes() + b"\0")
    with pytest.raises(InputError, match=r"^\S+other\.onnx is not the model \S+bottle\.json describes "
                                         r"\(their SHA-256 differ\); use the \.onnx and \.json written together"):
        check_export(onnx_path, max_export["json"])
    with pytest.raises(InputError, match="Cannot read the export"):
        check_export(tmp_path / "missing.onnx", max_export["json"])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(InputError, match="Cannot read the export"):
        check_export(max_export["onnx"], broken)


@pytest.mark.parametrize("threshold, low, high", [(0.5, 0.2, 0.9), (0.2, 0.2, 0.9), (0.9, 0.2, 0.9)])
def test_graph_normalized_scores_equal_the_numpy_ones(threshold, low, high):
    scores = np.array([0.0, 0.2, 0.35, 0.5, 0.7, 0.9, 1.5], dtype=np.float32)
    np.testing.assert_allclose(graph_normalized_scores(torch.from_numpy(scores), threshold, low, high).numpy(),
                               metrics.normalized_scores(scores, threshold, low, high), atol=1e-6)
