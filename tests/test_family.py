"""DRD as a second method, its parts as switches, and the family preset on the demo data."""
import csv

import pytest
import torch

import main
from model import build_model
from utils.engine import Objective


def test_method_drd_brings_drds_parts_and_training_constants():
    config = main.resolve_config(["--method=drd"])
    assert (config["BOTTLENECK"], config["SYNTHESIS"], config["IMAGE_SCORE"]) == ("mfcf", "drd", "refined")
    assert (config["FLM"], config["BATCH_SIZE"], config["WEIGHT_DECAY"], config["LEARNING_RATE"]) == (False, 4, 1e-5, 0.005)
    # The command line still wins over the method's defaults.
    assert main.resolve_config(["--method=drd", "--image_score=max"])["IMAGE_SCORE"] == "max"
    # MRKD's defaults are untouched by DRD's existence.
    mrkd = main.resolve_config([])
    assert (mrkd["BOTTLENECK"], mrkd["SYNTHESIS"], mrkd["IMAGE_SCORE"], mrkd["WEIGHT_DECAY"]) == ("ocbe", "nsa", "max", 0.0)


def test_drd_without_pseudo_anomalies_is_a_clear_error(capsys):
    assert main.main(["--method=drd", "--ilm=False"]) == 1
    assert "METHOD=drd trains on pseudo-abnormal images: it needs ILM=True." in capsys.readouterr().err


def test_drd_objective_trains_bottleneck_and_student_not_the_teacher():
    torch.manual_seed(0)
    model = build_model("resnet18", weights=None, flm=False, bottleneck="mfcf")
    clean, pseudo = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    loss = Objective("drd").loss(model, clean, pseudo, None)
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is not None for p in model.bottleneck.parameters())
    assert not any(p.grad is not None for p in model.teacher.parameters())


@pytest.mark.parametrize("switches", [
    ("--bottleneck=mfcf",),                      # MRKD with DRD's bottleneck
    ("--image_score=refined",),                  # MRKD with DRD's refined image score
    ("--synthesis=drd",),                        # MRKD trained on DRD's pseudo-anomalies
])
def test_drds_parts_combine_with_mrkd(tmp_path, demo_args, switches):
    assert main.main(demo_args(*switches)) == 0
    checkpoint = torch.load(tmp_path / "checkpoints" / "demo" / "demo_texture.pt", weights_only=True)
    assert checkpoint["generators"]  # still MRKD: FLM's generators are trained
    assert any(key.startswith("level3") for key in checkpoint["bottleneck"]) == ("--bottleneck=mfcf" in switches)


def test_family_preset_puts_the_three_methods_side_by_side(tmp_path, demo_args):
    assert main.main(demo_args("--experiment=family")) == 0
    run = tmp_path / "results" / "demo"
    with open(run / "family.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["category"] for row in rows] == ["RD4AD", "MRKD", "DRD"]
    assert all(row["status"] == "ok" and 0 <= float(row["aupro"]) <= 1 for row in rows)
    table = (run / "family.md").read_text()
    assert "| DRD |" in table and "99.5" in table and "98.9" in table  # each paper's numbers beside ours
    drd = torch.load(tmp_path / "checkpoints" / "demo" / "DRD" / "demo_texture.pt", weights_only=True)
    assert drd["config"]["METHOD"] == "drd" and drd["generators"] == {}
    assert drd["config"]["BOTTLENECK"] == "mfcf" and drd["config"]["BATCH_SIZE"] == 4
    rd4ad = torch.load(tmp_path / "checkpoints" / "demo" / "RD4AD" / "demo_texture.pt", weights_only=True)
    assert (rd4ad["config"]["ILM"], rd4ad["config"]["FLM"]) == (False, False)
