"""Switches of Section 4 and the named presets, end to end on the demo data."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import main
from model import build_model
from utils.engine import Execution, Objective, train_epoch
from utils.presets import PRESETS, slug, training_key


def assert_png_with_content(path):
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    assert pixels.std() > 10, f"{path} looks blank"


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_row_is_a_valid_configuration(name):
    preset = PRESETS[name]
    labels = [slug(row.label) for row in preset.rows]
    assert len(set(labels)) == len(labels)
    for row in preset.rows:
        assert set(row.constants) <= set(main.CONSTANTS)
        main.check_config({**main.resolve_config([]), **row.constants})


def test_table7_rows_share_one_training():
    keys = {training_key(row) for row in PRESETS["table7"].rows}
    assert len(keys) == 1
    assert len({training_key(row) for row in PRESETS["table5"].rows}) == 4


class Recorder(torch.nn.Module):
    """Wraps a model and records whether the student got separate (augmented) inputs."""

    def __init__(self, model):
        super().__init__()
        self.model, self.augmented = model, []

    def forward(self, images, augmented=None, mask_generator=None):
        self.augmented.append(augmented)
        return self.model(images, augmented, mask_generator)


@pytest.mark.parametrize("ilm", [True, False])
def test_ilm_switch_decides_what_the_student_sees(ilm):
    torch.manual_seed(0)
    model = build_model("resnet18", weights=None)
    recorder = Recorder(model)
    clean, augmented = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    loader = DataLoader(TensorDataset(clean, augmented), batch_size=2)
    optimizer = torch.optim.Adam(model.trainable_parameters())
    train_epoch(recorder, loader, optimizer, torch.device("cpu"), Objective("mrkd", ilm), torch.Generator(), Execution())
    assert len(recorder.augmented) == 2
    assert all((seen is not None) == ilm for seen in recorder.augmented)


def test_flm_switch_leaves_no_generator_in_the_optimiser(tmp_path, demo_args):
    without = build_model("resnet18", weights=None, flm=False)
    assert len(without.trainable_parameters()) == len(list(without.bottleneck.parameters())) + \
        len(list(without.student.parameters()))
    assert main.main(demo_args("--categories=demo_object", "--flm=False")) == 0
    checkpoint = torch.load(tmp_path / "checkpoints" / "demo" / "demo_object.pt", weights_only=True)
    assert checkpoint["generators"] == {}
    optimised = sum(len(group["params"]) for group in checkpoint["optimizer"]["param_groups"])
    assert optimised == len(without.trainable_parameters())


def read_rows(path):
    with open(path) as file:
        return list(csv.DictReader(file))


def test_table5_preset_runs_every_row_and_draws_fig9_across_rows(tmp_path, demo_args, capsys):
    assert main.main(demo_args("--categories=demo_object", "--figures=True", "--experiment=table5")) == 0
    run = tmp_path / "results" / "demo"
    table = (run / "table5.md").read_text()
    for row in PRESETS["table5"].rows:
        assert f"| {row.label} |" in table
    assert "| RD4AD (baseline) |" in table and "| 98.5 |" in table  # the paper's row beside ours
    assert len(read_rows(run / "table5.csv")) == 4
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "demo").iterdir()) == sorted(
        slug(row.label) for row in PRESETS["table5"].rows)
    assert_png_with_content(run / "figures" / "demo_object_features_flm.png")
    for name in ("scores", "examples", "roc", "features"):
        assert_png_with_content(run / "baseline_ILM_FLM_MRKD" / "figures" / f"demo_object_{name}.png")


def test_table7_preset_evaluates_one_training_six_ways(tmp_path, demo_args):
    assert main.main(demo_args("--categories=demo_object", "--experiment=table7")) == 0
    assert [p.name for p in (tmp_path / "checkpoints" / "demo").iterdir()] == ["SM_1"]
    rows = read_rows(tmp_path / "results" / "demo" / "table7.csv")
    assert [row["category"] for row in rows] == [row.label for row in PRESETS["table7"].rows]
    assert len({row["pixel_auroc"] for row in rows}) > 1  # the level subset changes the map


def test_fig11_preset_draws_the_lambda_sweep(tmp_path, demo_args):
    assert main.main(demo_args("--categories=demo_object", "--experiment=fig11")) == 0
    assert_png_with_content(tmp_path / "results" / "demo" / "figures" / "flm_ratio_sweep.png")
    assert len(read_rows(tmp_path / "results" / "demo" / "fig11.csv")) == 5


def test_experiment_run_name_defaults_to_the_preset():
    assert main.resolve_config(["--experiment=table8"])["RUN_NAME"] == "table8"
    assert main.resolve_config(["--experiment=table8", "--run_name=mine"])["RUN_NAME"] == "mine"
