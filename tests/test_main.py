"""main.py end to end on the demo data: configuration, errors, checkpoints, resume, runs never lost."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import main
from dataset import category_files, make_demo_dataset
from model.methods import OBJECTIVES
from tests.helpers import as_written_before, error_message, read_rows, settings_of, skip_training
from utils import metrics
from utils.config import parse_overrides
from utils.predictions import Predictions
from utils.runs import RunLock

METRIC_NAMES = ["image_auroc", "pixel_auroc", "aupro", "aupro_per_image"]


def test_overrides_follow_the_type_of_each_constant():
    constants = {"EPOCHS": 200, "LEARNING_RATE": 0.005, "CATEGORIES": (), "SCORE_LEVELS": (1, 2, 3),
                 "FLM": True, "WEIGHTS": "imagenet", "BETAS": (0.5, 0.999)}
    overrides = parse_overrides(constants, ["--epochs=3", "--learning_rate=1e-3", "--categories=bottle,cable",
                                            "--score_levels=2,3", "--flm=false", "--weights=none", "--betas=0.9,0.99"])
    assert overrides == {"EPOCHS": 3, "LEARNING_RATE": 0.001, "CATEGORIES": ("bottle", "cable"),
                         "SCORE_LEVELS": (2, 3), "FLM": False, "WEIGHTS": None, "BETAS": (0.9, 0.99)}
    assert parse_overrides(constants, ["--flm"]) == {"FLM": True}
    assert constants["EPOCHS"] == 200  # the defaults are not touched


@pytest.mark.parametrize("argument, message", [
    ("--epoch=3", "Unknown option '--epoch=3'; valid options are --accumulate, --alpha, --backbone"),
    ("--epochs=abc", "--epochs expects an integer, got 'abc'."),
    ("--ilm=maybe", "--ilm expects True or False, got 'maybe'."),
    ("--epochs", "--epochs needs a value: --epochs=..."),
    ("--flm_ratio=1.5", "FLM_RATIO (lambda) must lie in [0, 1)."),
    ("--score_levels=0,4", "SCORE_LEVELS must be a non-empty subset of 1,2,3."),
    ("--backbone=vgg16", "Unknown backbone 'vgg16'"),
    ("--dataset=imagenet", "DATASET must be one of mvtec, btad, mtd"),
    ("--method=patchcore", "METHOD must be one of mrkd, drd, rdpp."),
    ("--experiment=table9", "EXPERIMENT must be one of table3"),
])
def test_bad_constants_give_one_clear_sentence(argument, message, capsys):
    assert main.main([argument]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_every_constant_belongs_to_a_settings_bundle():
    """A constant no bundle reads would be silently ignored."""
    settings = settings_of()
    bundled = [name for part in (settings.training, settings.scoring, settings.run, settings.machine, settings.mode)
               for name in part.record()]
    assert sorted(bundled) == sorted(main.CONSTANTS)  # each constant in exactly one bundle


def test_resolution_layers_demo_method_command_line_and_row():
    demo = settings_of({"DEMO": True, "EPOCHS": 1})
    assert (demo.training.epochs, demo.training.backbone, demo.training.weights) == (1, "resnet18", None)
    assert settings_of({}).training.epochs == 200  # the paper's, without --demo
    drd = settings_of({"METHOD": "drd", "IMAGE_SCORE": "max"})
    assert (drd.training.loss, drd.training.bottleneck, drd.training.batch_size, drd.scoring.image_score) == \
        ("drd", "mfcf", 4, "max")  # the command line wins over the method's preset
    row = settings_of({"ALPHA": 0.5}, {"ALPHA": 0.2})
    assert row.training.alpha == 0.2  # a row is what its table says
    assert settings_of({"EXPERIMENT": "table8"}).run.run_name == "table8"
    assert settings_of({"EXPERIMENT": "table8", "DEMO": True}).run.run_name == "table8"
    assert settings_of({"EXPERIMENT": "table8", "RUN_NAME": "mine"}).run.run_name == "mine"


def test_defaults_are_the_papers():
    settings = settings_of({})
    training, scoring = settings.training, settings.scoring
    assert (training.epochs, training.batch_size, training.learning_rate, training.betas) == (200, 16, 0.005, (0.5, 0.999))
    assert (training.flm_ratio, training.alpha, training.seed, training.image_size) == (0.2, 1.0, 111, 256)
    assert (training.backbone, training.weights, training.ilm, training.flm) == ("wide_resnet50_2", "imagenet", True, True)
    assert (scoring.score_levels, scoring.eval_masks, scoring.sigma, training.fast) == ((1, 2, 3), 1, 4.0, False)


def test_help_shows_the_constants_and_the_demo_and_method_settings(capsys):
    assert main.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--flm_ratio=0.2  # lambda of Eq. (2), Sec. 4.1" in out and "\nTraining:\n  --epochs=200  # Sec. 4.1" in out
    assert "What --demo sets:\n  {'DATA_DIR': 'results/demo_data'" in out and "drd: {'LOSS': 'drd'" in out


def test_missing_dataset_exits_with_the_loaders_message_only(tmp_path, capsys):
    code = main.main([f"--data_dir={tmp_path}/nowhere", f"--results_dir={tmp_path}/results"])
    err = capsys.readouterr().err
    assert code == 1
    assert str(tmp_path / "nowhere") in err and "mvtec.com" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_demo_run_writes_everything_and_evaluates_deterministically(tmp_path, demo_args, capsys):
    assert main.main(demo_args("--figures=True")) == 0
    out = capsys.readouterr().out
    run = tmp_path / "results" / "demo"
    assert "demo_texture image_auroc" in out and "| mean |" in out
    assert f"checkpoints in {tmp_path / 'checkpoints' / 'demo'}" in out and "no NSA constants" not in out
    rows = read_rows(run / "metrics.csv")
    assert [row["category"] for row in rows] == ["demo_texture", "mean"]
    assert list(rows[0]) == ["category", *METRIC_NAMES, "threshold", "threshold_rule", "threshold_f1_test", "f1_f1_test",
                             "precision_f1_test", "recall_f1_test", "status"]
    assert all(0 <= float(rows[0][name]) <= 1 for name in METRIC_NAMES)
    assert json.loads((run / "config.json").read_text())["EPOCHS"] == 1
    assert (run / "metrics.md").read_text().startswith("| category |")
    # The decision threshold for new images: the best F1 on the test scores, in the table and the predictions.
    evaluated = Predictions.load(run / "predictions" / "demo_texture.npz")
    assert float(rows[0]["threshold"]) == evaluated.threshold == metrics.f1_threshold(evaluated.labels, evaluated.scores)
    assert rows[1]["threshold"] == "" and f"threshold {float(rows[0]['threshold']):.4g}" in out
    assert (run / "figures" / "demo_texture_examples.png").exists()
    # A finished category keeps its weights, not the optimiser's state.
    checkpoint = torch.load(tmp_path / "checkpoints" / "demo" / "demo_texture.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["config"]["BACKBONE"] == "resnet18" and checkpoint["config"]["FORMAT"] == 2
    assert set(checkpoint) == {"bottleneck", "student", "generators", "epoch", "config"}

    # Evaluating the saved checkpoint again gives exactly the same numbers (seeded FLM masks), also
    # when the run was written by an earlier version of the code, without the settings added since.
    as_written_before(run, tmp_path / "checkpoints" / "demo")
    assert main.main(demo_args("--eval_only=True")) == 0
    assert read_rows(run / "metrics.csv") == rows

    # A failed evaluation (another backbone) names the differences and leaves the run as it was.
    config = (run / "config.json").read_text()
    capsys.readouterr()
    assert main.main(demo_args("--eval_only=True", "--backbone=resnet50")) == 1
    err = error_message(capsys.readouterr().err)
    assert "it was trained with other settings (BACKBONE 'resnet18' -> 'resnet50')" in err and err.count("\n") == 1
    assert (run / "config.json").read_text() == config and read_rows(run / "metrics.csv") == rows


def test_a_run_never_silently_replaces_another(tmp_path, monkeypatch):
    def earlier_run(name, demo):
        (tmp_path / "results" / name / "predictions").mkdir(parents=True)
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "results" / name / "metrics.csv").write_text("category\n")
        (tmp_path / "results" / name / "predictions" / "other.npz").write_text("")
        (tmp_path / "checkpoints" / name / "other.pt").write_text("")
        (tmp_path / "results" / name / "config.json").write_text(json.dumps({"DEMO": demo}))

    def claim(name, *arguments):
        settings = settings_of(parse_overrides(main.CONSTANTS, [f"--run_name={name}", f"--results_dir={tmp_path}/results",
                                                                f"--checkpoint_dir={tmp_path}/checkpoints", *arguments]))
        lock = RunLock(tmp_path / "checkpoints" / name, name)
        try:
            main.claim(settings, settings.run.folders(), lock, {})
        finally:
            lock.release()

    earlier_run("mine", demo=False)
    for arguments in ((), ("--demo",)):  # a demo never replaces a run of the user's own
        with pytest.raises(main.InputError, match="A run named 'mine' exists"):
            claim("mine", *arguments)
    earlier_run("demo", demo=True)
    claim("demo", "--demo")  # the demo may replace its own earlier run
    assert not (tmp_path / "results" / "demo" / "metrics.csv").exists()
    real_rename = os.rename

    def no_second_move(source, target):
        if "checkpoints" in str(source):
            raise PermissionError(13, "Permission denied", str(source))
        return real_rename(source, target)

    with monkeypatch.context() as patch:  # the checkpoints cannot be moved: nothing is deleted, one sentence
        patch.setattr(os, "rename", no_second_move)
        with pytest.raises(main.InputError, match=r"Cannot move \S*checkpoints/mine aside to overwrite the run \(Permission denied\); "
                                                  r"nothing was deleted"):
            claim("mine", "--overwrite=True")
    assert (tmp_path / "results" / "mine" / "predictions" / "other.npz").exists()
    assert (tmp_path / "checkpoints" / "mine" / "other.pt").exists()
    claim("mine", "--overwrite=True")  # replaces the whole run: no category of the old one is left
    assert list((tmp_path / "results" / "mine").rglob("*.*")) == [tmp_path / "results" / "mine" / "config.json"]
    assert not (tmp_path / "checkpoints" / "mine").exists()
    # Nothing left aside, no lock file left behind.
    assert sorted(path.name for path in (tmp_path / "results").iterdir()) == ["demo", "mine"]
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_a_run_that_failed_on_bad_input_can_be_rerun(tmp_path, plain_args, monkeypatch, capsys):
    skip_training(monkeypatch)
    assert main.main(plain_args(f"--weights={tmp_path}/missing.pth")) == 1
    assert "missing.pth" in capsys.readouterr().err
    assert main.main(plain_args()) == 0  # not refused: the failed run wrote no result


def test_a_batch_of_one_image_at_32_pixels_is_one_sentence(tmp_path, demo_args, capsys):
    """At 32 px the bottleneck's last stage has 1 x 1 features: batch norm fails on one image.
    Refused before any folder is made."""
    for batch_size in (15, 1):  # 16 training images: a last batch of one; every batch of one
        assert main.main(demo_args(f"--batch_size={batch_size}", f"--run_name=batch{batch_size}")) == 1
        assert error_message(capsys.readouterr().err) == (
            f"error: At IMAGE_SIZE=32 batch norm cannot train on a batch of one image, which 16 training images "
            f"of demo_texture in batches of {batch_size} give; choose another BATCH_SIZE or an IMAGE_SIZE of 64 "
            f"or more.\n")
    assert not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()


def test_unwritable_results_give_one_sentence_and_keep_the_metrics(tmp_path, demo_args, monkeypatch, capsys):
    skip_training(monkeypatch)
    (tmp_path / "file").write_text("")
    assert main.main(demo_args(f"--results_dir={tmp_path}/file")) == 1
    err = error_message(capsys.readouterr().err)
    assert err.startswith(f"error: Cannot create the folder {tmp_path / 'file' / 'demo'}") and err.count("\n") == 1

    def refuse(*arguments):
        raise PermissionError(13, "Permission denied", str(tmp_path / "figure.png"))

    monkeypatch.setattr(main, "draw_category", refuse)
    assert main.main(demo_args("--figures=True")) == 1
    assert "Permission denied" in capsys.readouterr().err
    assert read_rows(tmp_path / "results" / "demo" / "metrics.csv")[0]["status"] == "ok"


def test_eval_only_without_checkpoint_is_a_clear_error(tmp_path, demo_args, capsys):
    assert main.main(demo_args("--eval_only=True", "--run_name=untrained")) == 1
    assert "Run 'untrained' has no checkpoint to evaluate in" in capsys.readouterr().err


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, demo_args, monkeypatch, capsys):
    common = ("--checkpoint_every=1", "--epochs=2")
    assert main.main(demo_args("--run_name=straight", *common)) == 0
    real_epoch = main.train_epoch
    calls = []

    def interrupted_in_epoch_2(*arguments, **keywords):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*arguments, **keywords)

    monkeypatch.setattr(main, "train_epoch", interrupted_in_epoch_2)
    assert main.main(demo_args("--run_name=split", *common)) == 130
    assert "optimizer" in torch.load(tmp_path / "checkpoints" / "split" / "demo_texture.pt", weights_only=True)
    monkeypatch.setattr(main, "train_epoch", real_epoch)

    # Changed training settings are refused, with the list of differences.
    capsys.readouterr()
    assert main.main(demo_args("--run_name=split", "--resume=True", "--learning_rate=0.01", "--alpha=0.5",
                               *common)) == 1
    err = error_message(capsys.readouterr().err)
    assert "ALPHA 1.0 -> 0.5; LEARNING_RATE 0.005 -> 0.01" in err and err.count("\n") == 1

    as_written_before(tmp_path / "results" / "split", tmp_path / "checkpoints" / "split")  # an earlier version's run
    assert main.main(demo_args("--run_name=split", "--resume=True", *common)) == 0
    straight, split = (torch.load(tmp_path / "checkpoints" / name / "demo_texture.pt", weights_only=True)
                       for name in ("straight", "split"))
    assert split["epoch"] == straight["epoch"] == 2
    for key, tensor in straight["student"].items():
        torch.testing.assert_close(split["student"][key], tensor, rtol=1e-4, atol=1e-5)
    assert read_rows(tmp_path / "results" / "split" / "metrics.csv") == \
        read_rows(tmp_path / "results" / "straight" / "metrics.csv")

    # A finished category has no optimiser state left to go on from.
    assert main.main(demo_args("--run_name=split", "--resume=True", "--epochs=3", "--checkpoint_every=1")) == 1
    assert "holds a finished training (2 epochs)" in capsys.readouterr().err


def test_nan_loss_stops_the_category_and_keeps_the_last_good_checkpoint(tmp_path, demo_args, monkeypatch, capsys):
    real_objective = OBJECTIVES["mrkd"]
    calls = []

    def loss_turning_nan(*arguments):
        calls.append(1)
        loss = real_objective(*arguments)
        return loss * float("nan") if len(calls) > 1 else loss  # one step an epoch: epoch 2 diverges

    monkeypatch.setitem(OBJECTIVES, "mrkd", loss_turning_nan)
    assert main.main(demo_args("--epochs=3", "--checkpoint_every=1")) == 1
    out = capsys.readouterr().out
    assert "training stopped in epoch 2: the loss became nan at step 1" in out
    assert "the last good checkpoint is" in out
    checkpoint = torch.load(tmp_path / "checkpoints" / "demo" / "demo_texture.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert read_rows(tmp_path / "results" / "demo" / "metrics.csv")[0]["status"] == "diverged"


def test_a_category_without_anomalous_test_images_is_reported_not_crashed_on(tmp_path, demo_args, monkeypatch,
                                                                              capsys):
    skip_training(monkeypatch)
    data = tmp_path / "data"
    make_demo_dataset(data)
    for defect in (data / "demo_texture" / "test").iterdir():
        if defect.name != "good":
            shutil.rmtree(defect)  # the demo data is not regenerated: its version marker is there
    assert main.main(demo_args(f"--data_dir={data}")) == 1  # nothing was evaluated
    captured = capsys.readouterr()
    assert "demo_texture: skipped, its test set holds no anomalous image to evaluate on." in captured.out
    assert error_message(captured.err) == "error: no category was evaluated (see the lines above).\n"
    assert read_rows(tmp_path / "results" / "demo" / "metrics.csv")[0]["status"] == "no anomalous test image"
    assert main.main(demo_args(f"--data_dir={data}", "--categories=demo_object")) == 0  # the name is not taken


def test_a_trained_run_scores_new_images(trained, demo_dir, capsys):
    tmp_path = trained
    run = tmp_path / "results" / "demo"
    evaluated = Predictions.load(run / "predictions" / "demo_texture.npz")
    test_images = [sample.image for sample in category_files("mvtec", demo_dir, "demo_texture").test]
    # New images in nested folders, suffixes in any case, one unreadable file.
    new = tmp_path / "new"
    chosen = {new / "a" / "000.png": "good/000.png", new / "b" / "IMG.PNG": "missing/001.png",
              new / "b" / "c" / "scan.bmp": "scratch/002.png"}
    for path, source in chosen.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(demo_dir / "demo_texture" / "test" / source).save(path)
    broken = new / "broken.png"
    broken.write_bytes(b"not an image")
    predict = ["--run_name=demo", f"--results_dir={tmp_path}/results", f"--checkpoint_dir={tmp_path}/checkpoints",
               "--categories=demo_texture"]
    capsys.readouterr()

    assert main.main([*predict, f"--predict={new}"]) == 1
    err = error_message(capsys.readouterr().err)
    assert err.startswith(f"error: Cannot read image {broken} (") and err.count("\n") == 1
    table = run / "predict" / "demo_texture.csv"
    rows = read_rows(table)
    assert list(rows[0]) == ["path", "score", "normalized_score", "anomalous", "threshold", "threshold_chosen"]
    assert {row["threshold_chosen"] for row in rows} == {"chosen on the test set (F1-best)"}
    assert [row["path"] for row in rows] == [str(path) for path in sorted(chosen)]
    # Scored as the test set was: the same checkpoint, settings and per-image FLM masks, up to
    # the float noise of convolutions on batches of another size (1.2e-4 seen on an H100 with
    # cuDNN's TF32 convolutions, 1e-7 on a CPU).
    scores = np.array([float(row["score"]) for row in rows])
    expected = [evaluated.scores[test_images.index(demo_dir / "demo_texture" / "test" / chosen[path])]
                for path in sorted(chosen)]
    np.testing.assert_allclose(scores, expected, rtol=1e-3)
    threshold, low, high = evaluated.threshold, evaluated.scores.min(), evaluated.scores.max()
    assert [row["anomalous"] for row in rows] == [str(score >= threshold) for score in scores]
    np.testing.assert_allclose([float(row["normalized_score"]) for row in rows],
                               metrics.normalized_scores(scores, threshold, low, high), rtol=1e-6)
    for overlay in ("a/000.png.png", "b/IMG.PNG.png", "b/c/scan.bmp.png"):
        assert (run / "predict" / "demo_texture" / overlay).read_bytes()[:4] == b"\x89PNG"

    # Every call gives the same scores, also on a run written by an earlier version; one image alone
    # scores as it did among the others.
    broken.unlink()
    as_written_before(run, tmp_path / "checkpoints" / "demo")
    assert main.main([*predict, f"--predict={new}"]) == 0
    assert read_rows(table) == rows
    single = new / "b" / "IMG.PNG"
    assert main.main([*predict[:3], f"--predict={single}"]) == 0
    np.testing.assert_allclose(float(read_rows(table)[0]["score"]), scores[1], rtol=1e-5)

    # Each failure is one sentence.
    (tmp_path / "results" / "broken").mkdir()
    (tmp_path / "results" / "broken" / "config.json").write_text('{"EPOCHS": 1}')
    (tmp_path / "empty").mkdir()
    for arguments, message in [
        ([*predict, f"--predict={new}", "--epochs=3"], "leave out --epochs."),
        (["--run_name=nothing", f"--results_dir={tmp_path}/results", f"--predict={new}"], "No trained run 'nothing'"),
        (["--run_name=broken", f"--results_dir={tmp_path}/results", f"--predict={new}"],
         "config.json lacks the setting DATASET; it was not written by this project's main.py."),
        ([*predict[:3], "--categories=demo_object", f"--predict={new}"],
         "Run 'demo' has no checkpoint of category 'demo_object'"),
        ([*predict, f"--predict={tmp_path / 'empty'}"], f"No images (png, jpg, jpeg, bmp, tif, tiff) under {tmp_path}"),
    ]:
        capsys.readouterr()
        assert main.main(arguments) == 1
        err = error_message(capsys.readouterr().err)
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_visa_layout_trains_and_evaluates_end_to_end(tmp_path, plain_args, visa_dir, capsys):
    visa = ("--dataset=visa", f"--data_dir={visa_dir}")
    assert main.main(plain_args(*visa, "--categories=")) == 1  # VisA's own 12 categories are not there
    assert error_message(capsys.readouterr().err) == (
        f"error: Category 'candle' not found in {visa_dir / 'split_csv' / '1cls.csv'}; found: demo_texture, "
        f"demo_object.\n")
    assert main.main(plain_args(*visa, "--categories=demo_object")) == 0
    rows = read_rows(tmp_path / "results" / "plain" / "metrics.csv")
    assert rows[0]["category"] == "demo_object" and rows[0]["status"] == "ok" and float(rows[0]["threshold"]) > 0
    assert "paper" not in (tmp_path / "results" / "plain" / "metrics.md").read_text()
