"""Switches of Section 4 and the named presets, end to end on the demo data (the presets' plumbing
with the training stubbed out: the training itself is tested in test_main.py and test_family.py)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import main
from model.engine import Execution, Step, Trainer, train_epoch
from model.generator import MaskDraws
from model.methods import mrkd_objective
from tests.helpers import model_for, read_rows, settings_of, skip_training
from utils.presets import PRESETS, slug


def assert_png_with_content(path):
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=float)
    assert pixels.std() > 10, f"{path} looks blank"


def rows_of(name):
    """Each row's settings, resolved as `--experiment=name` resolves them."""
    return [settings_of({}, {**row.constants, "EXPERIMENT": "", "RUN_NAME": slug(row.label)})
            for row in PRESETS[name].rows]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_row_is_a_valid_configuration_of_its_own(name):
    labels = [slug(row.label) for row in PRESETS[name].rows]
    assert len(set(labels)) == len(labels)
    for row, settings in zip(PRESETS[name].rows, rows_of(name)):
        for constant, value in row.constants.items():
            assert settings.record()[constant] == value


def test_rows_differing_only_in_evaluation_share_one_training():
    assert len({settings.training for settings in rows_of("table7")}) == 1
    assert len({settings.scoring for settings in rows_of("table7")}) == 6
    assert len({settings.training for settings in rows_of("table5")}) == 4
    # IMAGE_SCORE is an evaluation constant too: varying it alone would share the training.
    refined = settings_of({"IMAGE_SCORE": "refined"})
    assert refined.training == settings_of().training and refined.scoring != settings_of().scoring


@pytest.mark.parametrize("ilm", [True, False])
def test_ilm_switch_decides_what_the_student_sees(ilm):
    torch.manual_seed(0)
    model = model_for("resnet18")
    seen, encode = [], model.encode  # what the teacher is given besides the clean images
    model.encode = lambda images, augmented=None: (seen.append(augmented), encode(images, augmented))[1]
    clean, augmented = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    batches = TensorDataset(clean, augmented) if ilm else TensorDataset(clean)  # TrainImages without ILM: (clean,)
    step = Step(model, torch.optim.Adam(model.trainable_parameters()), mrkd_objective, Execution())
    train_epoch(Trainer(model, step, Execution(), torch.device("cpu")), DataLoader(batches, batch_size=2),
                MaskDraws(torch.Generator()))
    assert len(seen) == 2
    assert all((inputs is not None) == ilm for inputs in seen)


def test_table5_preset_runs_every_row_and_draws_fig9_across_rows(tmp_path, demo_args, monkeypatch):
    skip_training(monkeypatch)
    # Every row asks for its figures in its own folder (what they show: tests/test_figures.py).
    drawn = []
    monkeypatch.setattr(main, "draw_category", lambda predictions, folder: drawn.append(folder))
    assert main.main(demo_args("--categories=demo_object", "--figures=True", "--experiment=table5")) == 0
    run = tmp_path / "results" / "table5"
    assert drawn == [run / slug(row.label) / "figures" for row in PRESETS["table5"].rows]
    table = (run / "table5.md").read_text()
    for row in PRESETS["table5"].rows:
        assert f"| {row.label} |" in table
    assert "| RD4AD (baseline) |" in table and "| 98.5 |" in table  # the paper's row beside ours
    assert len(read_rows(run / "table5.csv")) == 4
    checkpoints = tmp_path / "checkpoints" / "table5"
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(slug(row.label) for row in PRESETS["table5"].rows)
    # The FLM switch: RD4AD trains no generator, MRKD does.
    rd4ad = torch.load(checkpoints / "RD4AD_baseline" / "demo_object.pt", weights_only=True)
    mrkd = torch.load(checkpoints / "baseline_ILM_FLM_MRKD" / "demo_object.pt", weights_only=True)
    assert rd4ad["generators"] == {} and mrkd["generators"] != {}
    assert_png_with_content(run / "figures" / "demo_object_features_flm.png")  # Fig. 9, across the rows


def test_table7_preset_evaluates_one_training_six_ways(tmp_path, demo_args, monkeypatch):
    skip_training(monkeypatch)
    checks = []
    monkeypatch.setattr(main, "check_files", lambda files: checks.append(sorted(files)))
    assert main.main(demo_args("--categories=demo_object", "--experiment=table7")) == 0
    assert checks == [["demo_object"]]  # the files are decoded once, not once per row
    assert [p.name for p in (tmp_path / "checkpoints" / "table7").iterdir()] == ["SM_1"]
    rows = read_rows(tmp_path / "results" / "table7" / "table7.csv")
    assert [row["category"] for row in rows] == [row.label for row in PRESETS["table7"].rows]
    assert len({row["pixel_auroc"] for row in rows}) == 6  # the level subset changes the map


def test_fig11_preset_trains_each_lambda_and_draws_the_sweep(tmp_path, demo_args, monkeypatch):
    skip_training(monkeypatch)
    assert main.main(demo_args("--categories=demo_object", "--experiment=fig11")) == 0
    run = tmp_path / "results" / "fig11"
    assert_png_with_content(run / "figures" / "flm_ratio_sweep.png")
    assert len(read_rows(run / "fig11.csv")) == 5
    ratios = [json.loads((run / slug(row.label) / "config.json").read_text())["FLM_RATIO"]
              for row in PRESETS["fig11"].rows]
    assert ratios == [0.0, 0.2, 0.4, 0.6, 0.8]
    trained = [torch.load(tmp_path / "checkpoints" / "fig11" / slug(row.label) / "demo_object.pt",
                          weights_only=True)["config"]["FLM_RATIO"] for row in PRESETS["fig11"].rows]
    assert trained == ratios
