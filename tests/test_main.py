"""main.py end to end on the demo data: configuration, errors, checkpoints, resume, determinism."""
import csv
import json
import shutil

import pytest
import torch

import main
import utils.engine
from utils.config import apply_overrides


def read_metrics(path):
    with open(path) as file:
        return list(csv.DictReader(file))


def test_overrides_follow_the_type_of_each_constant():
    constants = {"EPOCHS": 200, "LEARNING_RATE": 0.005, "CATEGORIES": (), "SCORE_LEVELS": (1, 2, 3),
                 "FLM": True, "WEIGHTS": "imagenet", "BETAS": (0.5, 0.999)}
    config = apply_overrides(constants, ["--epochs=3", "--learning_rate=1e-3", "--categories=bottle,cable",
                                         "--score_levels=2,3", "--flm=false", "--weights=none", "--betas=0.9,0.99"])
    assert config == {"EPOCHS": 3, "LEARNING_RATE": 0.001, "CATEGORIES": ("bottle", "cable"),
                      "SCORE_LEVELS": (2, 3), "FLM": False, "WEIGHTS": None, "BETAS": (0.9, 0.99)}
    assert apply_overrides(constants, ["--flm"])["FLM"] is True
    assert constants["EPOCHS"] == 200  # the defaults are not touched


@pytest.mark.parametrize("argument, message", [
    ("--epoch=3", "Unknown option '--epoch=3'; valid options are --alpha, --backbone"),
    ("--epochs=abc", "--epochs expects an integer, got 'abc'."),
    ("--ilm=maybe", "--ilm expects True or False, got 'maybe'."),
    ("--epochs", "--epochs needs a value: --epochs=..."),
    ("--flm_ratio=1.5", "FLM_RATIO (lambda) must lie in [0, 1)."),
    ("--score_levels=0,4", "SCORE_LEVELS must be a non-empty subset of 1,2,3."),
    ("--backbone=vgg16", "Unknown backbone 'vgg16'"),
    ("--dataset=visa", "DATASET must be one of mvtec, btad, mtd."),
])
def test_bad_constants_give_one_clear_sentence(argument, message, capsys):
    assert main.main([argument]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_demo_configuration_takes_further_overrides():
    config = main.resolve_config(["--demo", "--epochs=1"])
    assert config["EPOCHS"] == 1 and config["BACKBONE"] == "resnet18" and config["WEIGHTS"] is None
    assert main.resolve_config([])["EPOCHS"] == 200  # the paper's, without --demo


def test_defaults_are_the_papers():
    config = main.resolve_config([])
    assert (config["EPOCHS"], config["BATCH_SIZE"], config["LEARNING_RATE"], config["BETAS"]) == (200, 16, 0.005, (0.5, 0.999))
    assert (config["FLM_RATIO"], config["ALPHA"], config["SEED"], config["IMAGE_SIZE"]) == (0.2, 1.0, 111, 256)
    assert (config["BACKBONE"], config["WEIGHTS"], config["ILM"], config["FLM"]) == ("wide_resnet50_2", "imagenet", True, True)
    assert (config["SCORE_LEVELS"], config["EVAL_MASKS"], config["FAST"]) == ((1, 2, 3), 1, False)


def test_missing_dataset_exits_with_the_loaders_message_only(tmp_path, capsys):
    code = main.main([f"--data_dir={tmp_path}/nowhere", f"--results_dir={tmp_path}/results"])
    err = capsys.readouterr().err
    assert code == 1
    assert str(tmp_path / "nowhere") in err and "mvtec.com" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_demo_run_writes_results_checkpoints_and_evaluates_deterministically(tmp_path, demo_args, capsys):
    assert main.main(demo_args("--figures=True")) == 0
    out = capsys.readouterr().out
    assert "demo_texture image_auroc" in out and "| mean |" in out
    run = tmp_path / "results" / "demo"
    rows = read_metrics(run / "metrics.csv")
    assert [row["category"] for row in rows] == ["demo_texture", "mean"]
    assert list(rows[0]) == ["category", "image_auroc", "pixel_auroc", "aupro", "aupro_per_image", "status"]
    assert all(0 <= float(rows[0][name]) <= 1 for name in ("image_auroc", "pixel_auroc", "aupro", "aupro_per_image"))
    assert json.loads((run / "config.json").read_text())["EPOCHS"] == 1
    assert (run / "metrics.md").read_text().startswith("| category |")
    assert (run / "predictions" / "demo_texture.npz").exists()
    assert (run / "figures" / "demo_texture_examples.png").exists()
    checkpoint = torch.load(tmp_path / "checkpoints" / "demo" / "demo_texture.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["config"]["RUN_NAME"] == "demo"
    assert set(checkpoint) == {"bottleneck", "student", "generators", "optimizer", "epoch", "config"}

    # Evaluating the saved checkpoint again gives exactly the same numbers (seeded FLM masks).
    assert main.main(demo_args("--eval_only=True")) == 0
    assert read_metrics(run / "metrics.csv") == rows


def test_a_run_never_silently_replaces_another(tmp_path, demo_args, capsys):
    assert main.main(demo_args("--run_name=first", "--overwrite=False")) == 0
    capsys.readouterr()
    assert main.main(demo_args("--run_name=first", "--overwrite=False")) == 1
    assert "A run named 'first' exists" in capsys.readouterr().err


def test_eval_only_without_checkpoint_is_a_clear_error(tmp_path, demo_args, capsys):
    assert main.main(demo_args("--eval_only=True", "--run_name=untrained")) == 1
    assert "No checkpoint at" in capsys.readouterr().err


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, demo_args):
    common = ("--checkpoint_every=1",)
    assert main.main(demo_args("--epochs=2", "--run_name=straight", *common)) == 0
    assert main.main(demo_args("--epochs=1", "--run_name=split", *common)) == 0
    assert main.main(demo_args("--epochs=2", "--run_name=split", "--resume=True", *common)) == 0
    straight, split = (torch.load(tmp_path / "checkpoints" / name / "demo_texture.pt", weights_only=True)
                       for name in ("straight", "split"))
    assert split["epoch"] == straight["epoch"] == 2
    for key, tensor in straight["student"].items():
        torch.testing.assert_close(split["student"][key], tensor, rtol=1e-4, atol=1e-5)
    assert read_metrics(tmp_path / "results" / "split" / "metrics.csv") == \
        read_metrics(tmp_path / "results" / "straight" / "metrics.csv")


def test_nan_loss_stops_the_category_and_keeps_the_last_good_checkpoint(tmp_path, demo_args, monkeypatch, capsys):
    real_loss = utils.engine.distillation_loss
    calls = []

    def loss_turning_nan(*arguments, **keywords):
        calls.append(1)
        loss = real_loss(*arguments, **keywords)
        return loss * float("nan") if len(calls) > 5 else loss  # 40 images / batch 8: epoch 2 diverges

    monkeypatch.setattr(utils.engine, "distillation_loss", loss_turning_nan)
    assert main.main(demo_args("--epochs=3", "--checkpoint_every=1")) == 1
    out = capsys.readouterr().out
    assert "training stopped in epoch 2: the loss became nan at step 1" in out
    assert "the last good checkpoint is" in out
    checkpoint = torch.load(tmp_path / "checkpoints" / "demo" / "demo_texture.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert read_metrics(tmp_path / "results" / "demo" / "metrics.csv")[0]["status"] == "diverged"


def test_fast_path_gives_the_faithful_metrics_within_tolerance(tmp_path, demo_args):
    """bf16 + channels_last vs fp32 on the demo object, 64 px, 8 epochs: measured at most 1.9 points apart."""
    common = ("--image_size=64", "--epochs=8", "--categories=demo_object")
    assert main.main(demo_args(*common, "--run_name=faithful")) == 0
    assert main.main(demo_args(*common, "--run_name=fast", "--fast=True")) == 0
    faithful, fast = (read_metrics(tmp_path / "results" / name / "metrics.csv")[0] for name in ("faithful", "fast"))
    for name in ("image_auroc", "pixel_auroc", "aupro", "aupro_per_image"):
        assert abs(float(fast[name]) - float(faithful[name])) <= 0.03, name
    assert float(faithful["pixel_auroc"]) > 0.9  # both detect the defects: the comparison means something


def test_a_category_without_anomalous_test_images_is_reported_not_crashed_on(tmp_path, demo_args, capsys):
    data = tmp_path / "data"
    main.make_demo_dataset(data)
    for defect in (data / "demo_texture" / "test").iterdir():
        if defect.name != "good":
            shutil.rmtree(defect)  # the demo data is not regenerated: its version marker is there
    assert main.main(demo_args(f"--data_dir={data}")) == 0
    assert "demo_texture: skipped, its test set holds no anomalous image to evaluate on." in capsys.readouterr().out
    assert read_metrics(tmp_path / "results" / "demo" / "metrics.csv")[0]["status"] == "no anomalous test image"
