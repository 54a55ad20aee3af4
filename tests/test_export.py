"""The ONNX export of a trained run (--export=True): the README's snippet, run with neither PyTorch nor
this repository importable, gives an image the score --predict gives it; the graph scores as PyTorch
does, in any batch; the JSON describes the run's preprocessing and decision; check_export catches a
mismatched pair; an export that cannot be made is one sentence.

One export serves the module (torch.onnx's exporter takes about 10 s on the 2-core CPU): the run
scores with DRD's refined image score over two FLM masks, whose graph holds every operation of the
default one (the maximum of the map, one mask) and more.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

import main
from dataset.images import load_image, to_tensor
from model.engine import score_images
from model.export import check_export, graph_normalized_scores
from model.generator import HashedDraws
from model.predict import trained_model
from model.settings import recorded
from tests.helpers import error_message, read_rows
from utils import metrics
from utils.errors import InputError
from utils.predictions import Predictions

README = Path(__file__).resolve().parents[1] / "README.md"
CATEGORY = "demo_object"
SIZE = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_dir):
    """A tiny demo run of CATEGORY, scored with the refined score over two masks, evaluated and exported."""
    folder = tmp_path_factory.mktemp("exported")
    where = [f"--results_dir={folder}/results", f"--checkpoint_dir={folder}/checkpoints", "--run_name=demo"]
    assert main.main(["--demo", f"--data_dir={demo_dir}", f"--image_size={SIZE}", "--epochs=1",
                      f"--categories={CATEGORY}", "--figures=False", "--image_score=refined", "--eval_masks=2",
                      *where]) == 0
    assert main.main([*where, "--export=True"]) == 0
    results = folder / "results" / "demo"
    export = results / "export"
    return {"folder": folder, "where": where, "results": results, "onnx": export / f"{CATEGORY}.onnx",
            "json": export / f"{CATEGORY}.json"}


@pytest.fixture(scope="module")
def pytorch(run):
    """The run's model and settings as --export rebuilds them (on the CPU, fp32)."""
    settings = recorded(main.CONSTANTS, {"RESULTS_DIR": str(run["folder"] / "results"), "RUN_NAME": "demo",
                                         "CHECKPOINT_DIR": str(run["folder"] / "checkpoints")}).replace_for_export()
    model = trained_model(settings, CATEGORY, torch.device("cpu"), settings.run.folders())[0].eval()
    return model, settings


@torch.no_grad()
def torch_path(pytorch, images):
    """Maps and scores as predict computes them (eval mode, HashedDraws masks), NumPy."""
    model, settings = pytorch
    scores, maps = score_images(model, images, settings.scoring, HashedDraws(images, settings.training.seed))
    return maps.numpy(), scores.numpy()


def run_onnx(run, images):
    session = onnxruntime.InferenceSession(run["onnx"], providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})


def random_images(count, seed=0):
    """`count` normalised images (count, 3, S, S) made from random uint8 pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)
    return torch.stack([to_tensor(image) for image in pixels])


def snippet_lines():
    """The lines between the ```python fences of the README's section on the ONNX export, as they are."""
    section = README.read_text().split("### Scoring without PyTorch: the ONNX export", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_snippet_alone_scores_as_predict_does(run, demo_dir, tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    for name in ("good/000.png", "scratch/001.png"):
        (new / name.replace("/", "_")).write_bytes((demo_dir / CATEGORY / "test" / name).read_bytes())
    # An image of another size and shape than the training images: the snippet resizes it as load_image does.
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (90, 70, 3), dtype=np.uint8)).save(new / "odd.png")
    assert main.main([*run["where"], f"--predict={new}"]) == 0
    predicted = read_rows(run["results"] / "predict" / f"{CATEGORY}.csv")
    assert len(predicted) == 3
    # The snippet verbatim, in a folder of its own holding the pair and the image under the README's names.
    # PyTorch and this repository cannot be imported: it needs onnxruntime, NumPy and Pillow only.
    blocked = ("torch", "torchvision", "model", "dataset", "utils", "main", "tests")
    script = (f"import sys\nsys.modules.update(dict.fromkeys({blocked!r}, None))\n"
              + snippet_lines() + "np.save('x.npy', x)\n")
    for row in predicted:
        folder = tmp_path / Path(row["path"]).stem
        folder.mkdir()
        shutil.copy(run["onnx"], folder / "bottle.onnx")
        shutil.copy(run["json"], folder / "bottle.json")
        shutil.copy(row["path"], folder / "new_bottle.png")
        (folder / "score.py").write_text(script)
        # -I: neither this repository nor the user's site.
        printed = subprocess.run([sys.executable, "-I", "score.py"], cwd=folder, capture_output=True, text=True,
                                 timeout=300)
        assert printed.returncode == 0, printed.stderr
        words = printed.stdout.split()
        assert printed.stdout == f"score {words[1]} normalized {words[3]} anomalous {words[5]}\n"
        np.testing.assert_allclose(float(words[1]), float(row["score"]), rtol=1e-4)
        np.testing.assert_allclose(float(words[3]), float(row["normalized_score"]), rtol=1e-4, atol=1e-6)
        assert words[5] == row["anomalous"]
        # The snippet's preprocessing is the datasets' to the bit.
        np.testing.assert_array_equal(np.load(folder / "x.npy"),
                                      to_tensor(load_image(Path(row["path"]), SIZE)).numpy().transpose(1, 2, 0))


def test_batch_is_dynamic_and_outputs_equal_the_pytorch_path(run, pytorch):
    images = random_images(3, seed=3)
    maps, scores, normalized = run_onnx(run, images)
    assert maps.shape == (3, SIZE, SIZE) and scores.shape == (3,) and normalized.shape == (3,)
    for b in range(3):
        alone = run_onnx(run, images[b:b + 1])
        for together, single in zip((maps, scores, normalized), alone):  # equal but for float rounding
            np.testing.assert_allclose(single[0], together[b], rtol=1e-4, atol=1e-5)
    torch_maps, torch_scores = torch_path(pytorch, images)
    np.testing.assert_allclose(maps, torch_maps, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores, torch_scores, rtol=1e-4)
    assert not np.allclose(scores, maps.reshape(3, -1).max(axis=1))  # the refined score, not the plain maximum
    description = json.loads(run["json"].read_text())
    np.testing.assert_allclose(normalized, metrics.normalized_scores(
        torch_scores, description["threshold"], description["low"], description["high"]), rtol=1e-4, atol=1e-6)


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


def test_json_describes_the_preprocessing_and_the_runs_decision(run):
    description = check_export(run["onnx"], run["json"])
    evaluated = Predictions.load(run["results"] / "predictions" / f"{CATEGORY}.npz")
    row = read_rows(run["results"] / "metrics.csv")[0]
    assert description["image_size"] == SIZE and description["resize"] == "lanczos"
    assert description["mean"] == [0.485, 0.456, 0.406] and description["std"] == [0.229, 0.224, 0.225]
    assert description["threshold"] == evaluated.threshold and description["threshold"] == float(row["threshold"])
    assert (description["low"], description["high"]) == (evaluated.scores.min(), evaluated.scores.max())
    assert description["threshold_rule"] == "f1_test" and description["seed"] == 111
    assert description["threshold_chosen"] == "chosen on the test set (F1-best)"
    assert description["settings"] == {**json.loads((run["results"] / "config.json").read_text()),
                                       "DEVICE": "cpu", "FAST": False, "COMPILE": False, "CATEGORIES": []}
    assert description["scoring"]["IMAGE_SCORE"] == "refined" and description["scoring"]["EVAL_MASKS"] == 2
    assert description["onnx_file"] == f"{CATEGORY}.onnx"


def test_check_export_refuses_a_pair_that_does_not_match(run, tmp_path):
    onnx_path = tmp_path / "other.onnx"
    onnx_path.write_bytes(run["onnx"].read_bytes() + b"\0")
    with pytest.raises(InputError, match=rf"^\S+other\.onnx is not the model \S+{CATEGORY}\.json describes "
                                         r"\(their SHA-256 differ\); use the \.onnx and \.json written together"):
        check_export(onnx_path, run["json"])
    with pytest.raises(InputError, match="Cannot read the export"):
        check_export(tmp_path / "missing.onnx", run["json"])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(InputError, match="Cannot read the export"):
        check_export(run["onnx"], broken)


def test_an_export_that_cannot_be_made_is_one_sentence(run, tmp_path, capsys):
    where = run["where"]
    for arguments, message in [
        ([*where, "--export=True", "--categories=demo_texture"], "Run 'demo' has no checkpoint of category"),
        ([*where, "--export=True", "--partial=True"], "--partial=True applies to --eval_only or --predict"),
        ([*where, "--export=True", "--epochs=3"], "--export exports with the settings the run was trained"),
        ([*where, "--export=True", "--eval_only=True"], "--eval_only and --export exclude each other"),
    ]:
        capsys.readouterr()
        assert main.main(arguments) == 1
        err = error_message(capsys.readouterr().err)
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    evaluated = run["results"] / "predictions" / f"{CATEGORY}.npz"
    evaluated.rename(tmp_path / "kept.npz")
    try:
        capsys.readouterr()
        assert main.main([*where, "--export=True"]) == 1
        assert "was never evaluated" in capsys.readouterr().err
    finally:
        (tmp_path / "kept.npz").rename(evaluated)


@pytest.mark.parametrize("threshold, low, high", [(0.5, 0.2, 0.9), (0.2, 0.2, 0.9), (0.9, 0.2, 0.9)])
def test_graph_normalized_scores_equal_the_numpy_ones(threshold, low, high):
    scores = np.array([0.0, 0.2, 0.35, 0.5, 0.7, 0.9, 1.5], dtype=np.float32)
    np.testing.assert_allclose(graph_normalized_scores(torch.from_numpy(scores), threshold, low, high).numpy(),
                               metrics.normalized_scores(scores, threshold, low, high), atol=1e-6)
