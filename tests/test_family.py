"""DRD as a second method, its parts as switches, and the family preset on the demo data."""
import numpy as np
import pytest
import torch

import main
from model.drd import drd_objective
from model.methods import OBJECTIVES
from tests.helpers import model_for, read_rows, settings_of, skip_training
from utils.paper import RDPP_EPOCHS


def test_method_drd_brings_drds_parts_and_training_constants():
    drd = settings_of({"METHOD": "drd"})
    assert (drd.training.loss, drd.training.bottleneck, drd.training.synthesis, drd.scoring.image_score) == \
        ("drd", "mfcf", "drd", "refined")
    assert (drd.training.flm, drd.training.batch_size, drd.training.weight_decay, drd.training.learning_rate) == \
        (False, 4, 1e-5, 0.005)
    # MRKD's defaults are untouched by DRD's existence.
    mrkd = settings_of()
    assert (mrkd.training.loss, mrkd.training.bottleneck, mrkd.training.synthesis, mrkd.scoring.image_score,
            mrkd.training.weight_decay) == ("mrkd", "ocbe", "nsa", "max", 0.0)


def test_drd_without_pseudo_anomalies_is_a_clear_error(capsys):
    assert main.main(["--method=drd", "--ilm=False"]) == 1
    assert "LOSS=drd trains on pseudo-abnormal images: it needs ILM=True." in capsys.readouterr().err


def test_drd_objective_trains_bottleneck_and_student_not_the_teacher():
    torch.manual_seed(0)
    model = model_for("resnet18", flm=False, bottleneck="mfcf")
    clean, pseudo = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    loss = drd_objective(model, clean, pseudo, None)
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is not None for p in model.bottleneck.parameters())
    assert not any(p.grad is not None for p in model.teacher.parameters())


@pytest.fixture
def plain_mrkd(finished):
    """The tiny demo run without any of DRD's switches (conftest's finished run), read by the tests that add one."""
    return finished / "results" / "demo", finished / "checkpoints" / "demo"


@pytest.mark.parametrize("switch", ["--bottleneck=mfcf", "--image_score=refined", "--synthesis=drd"])
def test_drds_parts_combine_with_mrkd(tmp_path, demo_args, plain_mrkd, switch, monkeypatch):
    """Each switch, against the same tiny run without it: still MRKD, and the switch changes what it says."""
    if switch == "--bottleneck=mfcf":  # the checkpoint's parts tell; the others compare trained weights
        skip_training(monkeypatch)
    assert main.main(demo_args(switch)) == 0
    results = (plain_mrkd[0], tmp_path / "results" / "demo")
    plain, switched = (torch.load(folder / "demo_texture.pt", weights_only=True)
                       for folder in (plain_mrkd[1], tmp_path / "checkpoints" / "demo"))
    assert switched["generators"] and switched["config"]["LOSS"] == "mrkd"  # still MRKD: FLM's G are trained
    if switch == "--bottleneck=mfcf":
        assert any(key.startswith("level3") for key in switched["bottleneck"])
        assert not any(key.startswith("level3") for key in plain["bottleneck"])
    elif switch == "--image_score=refined":
        # The same weights, the same maps, other image scores: (1 + v) x max.
        assert all(torch.equal(plain["student"][key], tensor) for key, tensor in switched["student"].items())
        predictions = [np.load(folder / "predictions" / "demo_texture.npz") for folder in results]
        np.testing.assert_array_equal(predictions[0]["example_maps"], predictions[1]["example_maps"])
        ratio = predictions[1]["scores"] / predictions[0]["scores"]
        assert np.all(ratio > 1) and np.all(ratio < 3) and np.ptp(ratio) > 0
    else:
        assert switched["config"]["SYNTHESIS"] == "drd"
        assert not all(torch.equal(plain["student"][key], tensor) for key, tensor in switched["student"].items())


def test_family_preset_puts_the_four_methods_side_by_side(tmp_path, demo_args, monkeypatch):
    """DRD and RD++ train; the epochs of MRKD's objective (MRKD, and RD4AD, MRKD with its switches
    off), trained in many other tests, are stubbed out."""
    real_epoch = main.train_epoch
    monkeypatch.setattr(main, "train_epoch", lambda trainer, *arguments, **keywords:
                        0.5 if trainer.eager.objective is OBJECTIVES["mrkd"] else
                        real_epoch(trainer, *arguments, **keywords))
    # Each method trains with its own batch size: not tiny_run's.
    assert main.main([argument for argument in demo_args("--experiment=family")
                      if not argument.startswith("--batch_size=")]) == 0
    run = tmp_path / "results" / "family"
    rows = read_rows(run / "family.csv")
    assert [row["category"] for row in rows] == ["RD4AD", "MRKD", "DRD", "RD++"]
    assert all(row["status"] == "ok" and 0 <= float(row["aupro"]) <= 1 for row in rows)
    table = (run / "family.md").read_text()
    assert "| DRD |" in table and "99.5" in table and "98.9" in table  # each paper's numbers beside ours
    drd = torch.load(tmp_path / "checkpoints" / "family" / "DRD" / "demo_texture.pt", weights_only=True)
    assert drd["config"]["LOSS"] == "drd" and drd["generators"] == {}
    assert drd["config"]["BOTTLENECK"] == "mfcf" and drd["config"]["BATCH_SIZE"] == 4
    rd4ad = torch.load(tmp_path / "checkpoints" / "family" / "RD4AD" / "demo_texture.pt", weights_only=True)
    assert (rd4ad["config"]["ILM"], rd4ad["config"]["FLM"]) == (False, False)
    rdpp = torch.load(tmp_path / "checkpoints" / "family" / "RD" / "demo_texture.pt", weights_only=True)
    assert rdpp["config"]["LOSS"] == "rdpp" and rdpp["config"]["ACCUMULATE"] == 2 and rdpp["projection"]
    assert "| RD++ |" in table and "99.4" in table and "95.0" in table  # RD++'s paper, AU-PRO per image


def test_family_on_visa_leaves_the_paper_columns_empty(tmp_path, plain_args, visa_dir, monkeypatch):
    """No paper reports RD4AD, MRKD or DRD on VisA: the table holds ours alone (training stubbed out)."""
    measured = {"category": "demo_object", "image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.7,
                "aupro_per_image": 0.75, "threshold": 0.3, "status": "ok"}
    monkeypatch.setattr(main, "run_categories", lambda *arguments, **keywords: [dict(measured)])
    family = ("--experiment=family", "--categories=demo_object")
    assert main.main(plain_args(*family, "--dataset=visa", f"--data_dir={visa_dir}")) == 0
    table = (tmp_path / "results" / "plain" / "family.md").read_text()
    assert table.startswith("| configuration | image_auroc | pixel_auroc | aupro | aupro_per_image | status |")
    assert "no paper number to compare with on this dataset" in table
    assert main.main(plain_args(*family, "--run_name=on_mvtec")) == 0
    table = (tmp_path / "results" / "on_mvtec" / "family.md").read_text()
    assert "| paper | diff |" in table and "99.5" in table


def test_best_on_test_selection_is_marked_and_picks_an_evaluated_epoch(tmp_path, demo_args, monkeypatch):
    skip_training(monkeypatch)
    assert main.main(demo_args("--select=best_on_test", "--eval_every=1", "--epochs=2", "--checkpoint_every=1")) == 0
    row = read_rows(tmp_path / "results" / "demo" / "metrics.csv")[0]
    assert row["protocol"] == "selected on the test set" and row["status"] in ("ok, epoch 1", "ok, epoch 2")
    assert "selected on the test set" in (tmp_path / "results" / "demo" / "metrics.md").read_text()
    # The checkpoint is the last epoch's, whichever epoch the selection reported.
    assert torch.load(tmp_path / "checkpoints" / "demo" / "demo_texture.pt", weights_only=True)["epoch"] == 2


def test_rdpp_epochs_per_category_replace_epochs_and_are_marked(tmp_path, plain_args, monkeypatch):
    skip_training(monkeypatch)
    monkeypatch.setitem(RDPP_EPOCHS, "demo_texture", 2)
    assert main.main(plain_args("--category_epochs=rdpp", "--epochs=1")) == 0
    assert torch.load(tmp_path / "checkpoints" / "plain" / "demo_texture.pt", weights_only=True)["epoch"] == 2
    assert read_rows(tmp_path / "results" / "plain" / "metrics.csv")[0]["protocol"] == "RD++'s epochs per category"


@pytest.mark.parametrize("arguments, message", [
    (["--select=best_on_test"], "SELECT=best_on_test picks among evaluations every EVAL_EVERY epochs"),
    (["--select=best_on_test", "--eval_every=1", "--eval_only=True"], "does not go with --resume or --eval_only"),
    (["--seeds=1,1"], "SEEDS must be distinct integers in [0, 2^32)."),
    (["--method=rdpp", "--projection=False"], "LOSS=rdpp trains a projection on noisy images"),
])
def test_protocol_constants_are_checked(arguments, message, capsys):
    assert main.main(arguments) == 1
    assert message in capsys.readouterr().err
