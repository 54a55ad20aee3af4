"""--export=True on a trained demo run: the README's onnxruntime snippet, run with neither PyTorch nor this
repository importable, gives an image the score --predict gives it; an export that cannot be made is one
sentence."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import main
from tests.helpers import error_message, read_rows

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet(onnx_file, json_file, image_file):
    """The README's snippet, its three file names replaced by these paths, as it is otherwise."""
    section = README.read_text().split("### Scoring without PyTorch: the ONNX export", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    names = '"bottle.onnx", "bottle.json", "new_bottle.png"'
    assert names in code
    return code.replace(names, ", ".join(f'"{path}"' for path in (onnx_file, json_file, image_file)))


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, demo_dir):
    folder = tmp_path_factory.mktemp("exported")
    where = [f"--results_dir={folder}/results", f"--checkpoint_dir={folder}/checkpoints", "--run_name=demo"]
    assert main.main(["--demo", f"--data_dir={demo_dir}", "--image_size=32", "--epochs=1",
                      "--categories=demo_object", "--figures=False", *where]) == 0
    assert main.main([*where, "--export=True"]) == 0
    return folder, where


def test_the_readme_snippet_scores_as_predict_does(exported_run, demo_dir, tmp_path):
    folder, where = exported_run
    images = tmp_path / "new"
    images.mkdir()
    for name in ("good/000.png", "scratch/001.png"):
        (images / name.replace("/", "_")).write_bytes((demo_dir / "demo_object" / "test" / name).read_bytes())
    assert main.main([*where, f"--predict={images}"]) == 0
    predicted = read_rows(folder / "results" / "demo" / "predict" / "demo_object.csv")
    export = folder / "results" / "demo" / "export"
    for row in predicted:
        code = "import sys\nsys.modules['torch'] = None  # PyTorch cannot be imported\n" + snippet(
            export / "demo_object.onnx", export / "demo_object.json", row["path"])
        # -I: neither this repository nor the user's site; run outside the repository.
        printed = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True)
        assert printed.returncode == 0, printed.stderr
        words = printed.stdout.split()
        np.testing.assert_allclose(float(words[1]), float(row["score"]), rtol=1e-4)
        np.testing.assert_allclose(float(words[3]), float(row["normalized_score"]), rtol=1e-4, atol=1e-6)
        assert words[5] == row["anomalous"]


def test_an_export_that_cannot_be_made_is_one_sentence(exported_run, tmp_path, capsys):
    folder, where = exported_run
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
    (folder / "results" / "demo" / "predictions" / "demo_object.npz").rename(tmp_path / "kept.npz")
    try:
        capsys.readouterr()
        assert main.main([*where, "--export=True"]) == 1
        assert "was never evaluated" in capsys.readouterr().err
    finally:
        (tmp_path / "kept.npz").rename(folder / "results" / "demo" / "predictions" / "demo_object.npz")
