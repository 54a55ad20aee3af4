"""Thresholds chosen without the test set: the held-out normal images, the rules of
THRESHOLD_RULES and what a threshold costs on the test set, against direct computations."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from dataset import folders
from dataset.folders import CategoryFiles, TestSample, category_files, hold_out, with_validation
from tests.test_datasets import _mtd
from utils.errors import InputError
import main
from tests.helpers import read_rows, skip_training
from utils.metrics import (NORMAL_STDS, THRESHOLD_RULES, decision_thresholds, f1_at, f1_threshold,
                           mean_std_threshold, normal_threshold, threshold_row)

FILES = [Path(f"train/{i:03d}.png") for i in range(40)]


def test_hold_out_is_a_seeded_split_of_the_files():
    kept, held = hold_out(FILES, 0.1, 111)
    assert len(held) == 4 and len(kept) == 36
    assert sorted(kept + held) == FILES and not set(kept) & set(held)
    assert kept == sorted(kept) and held == sorted(held)
    assert hold_out(FILES[::-1], 0.1, 111) == (kept, held)  # the order the files come in does not matter
    assert hold_out(FILES, 0.1, 112) != (kept, held)
    assert hold_out(FILES, 0.0, 111) == (FILES, [])
    with pytest.raises(ValueError, match="fraction"):
        hold_out(FILES, 1.0, 111)


def test_hold_out_draws_as_the_mtd_split_does():
    # The same permutation of the sorted files; the last round(fraction * n) of it are held out.
    order = np.random.default_rng(7).permutation(len(FILES))
    kept, held = hold_out(FILES, 0.25, 7)
    assert kept == sorted(FILES[i] for i in order[:30]) and held == sorted(FILES[i] for i in order[30:])


def test_mtd_split_is_the_draw_it_always_was(tmp_path):
    # MTD's split, now hold_out's: the first round(0.8 n) of a seeded permutation of the sorted
    # normal images train, the rest test, as before hold_out existed.
    _mtd(tmp_path, n_free=25)
    files = category_files("mtd", tmp_path, "mtd")
    normals = sorted((tmp_path / "MT_Free" / "Imgs").glob("*.jpg"))
    order = np.random.default_rng(folders.MTD_SPLIT_SEED).permutation(len(normals))
    n_train = round(folders.MTD_TRAIN_FRACTION * len(normals))
    assert files.train == sorted(normals[i] for i in order[:n_train])
    assert [s.image for s in files.test if s.label == 0] == sorted(normals[i] for i in order[n_train:])
    # Holding out round((1 - 0.8) n) keeps round(0.8 n), whatever the number of images.
    assert all(n - round((1 - folders.MTD_TRAIN_FRACTION) * n) == round(folders.MTD_TRAIN_FRACTION * n)
               for n in range(10_000))


def test_with_validation_holds_out_only_where_the_dataset_has_no_validation_set():
    test = [TestSample(Path("test/bad.png"), Path("gt/bad.png"), 1, "bad")]
    files = with_validation(CategoryFiles(FILES, test))
    assert (files.train, files.validation) == hold_out(FILES, folders.HOLD_OUT_FRACTION, folders.HOLD_OUT_SEED)
    assert files.test == test
    shipped = CategoryFiles(FILES, test, validation=[Path("validation/000.png")])
    assert with_validation(shipped) is shipped
    with pytest.raises(InputError, match="4 training images are too few to hold 10% of them out"):
        with_validation(CategoryFiles(FILES[:4], test))


def test_normal_threshold_passes_every_normal_score():
    scores = np.array([0.2, 0.7, 0.5], dtype=np.float32)
    threshold = normal_threshold(scores)
    # Compared as NumPy compares float32 scores with a Python float: in float32.
    assert not (scores >= threshold).any() and not (scores.astype(np.float64) >= threshold).any()
    assert threshold == np.nextafter(np.float32(0.7), np.float32(1))  # nothing between
    assert normal_threshold(np.ones((2, 3, 3))) == np.nextafter(1.0, 2.0)  # maps: every pixel
    assert normal_threshold(np.array([3, 1])) == np.nextafter(3.0, 4.0)
    with pytest.raises(ValueError, match="at least one score"):
        normal_threshold(np.array([]))


def test_mean_std_threshold_is_mean_plus_three_stds():
    assert NORMAL_STDS == 3.0
    assert mean_std_threshold(np.array([1.0, 3.0])) == 2.0 + 3 * 1.0
    values = np.random.default_rng(0).random((3, 8, 8))
    assert mean_std_threshold(values, 2.0) == pytest.approx(values.mean() + 2 * values.std())


@pytest.mark.parametrize("seed", range(5))
def test_f1_at_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    labels[0] = 1
    scores = np.round(rng.random(60) + 0.3 * labels, 1)  # ties at the threshold count as anomalous
    for threshold in (0.0, 0.5, 0.7, 2.0):
        predicted = scores >= threshold
        assert f1_at(labels, scores, threshold) == pytest.approx({
            "f1": f1_score(labels, predicted, zero_division=0),
            "precision": precision_score(labels, predicted, zero_division=0),
            "recall": recall_score(labels, predicted)})


def test_f1_at_the_f1_test_threshold_is_the_best_f1():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 50)
    scores = rng.random(50) + 0.4 * labels
    best = f1_at(labels, scores, f1_threshold(labels, scores))["f1"]
    assert all(f1_at(labels, scores, t)["f1"] <= best for t in scores)


def test_f1_at_errors():
    with pytest.raises(ValueError, match="same shape"):
        f1_at(np.ones(3), np.ones(4), 0.5)
    with pytest.raises(ValueError, match="at least one anomalous"):
        f1_at(np.zeros(3), np.ones(3), 0.5)


def test_decision_thresholds_and_their_costs():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.45, 0.4, 0.6, 0.9])
    normal_scores = np.array([0.2, 0.3])  # held-out normal images
    thresholds = decision_thresholds(labels, scores, normal_scores)
    assert tuple(thresholds) == THRESHOLD_RULES
    assert thresholds == {"f1_test": 0.4, "normal": np.nextafter(0.3, 1.0),
                          "normal_mean_3std": pytest.approx(0.25 + 3 * 0.05)}
    row = threshold_row(labels, scores, {"f1_test": 0.4, "normal": np.nextafter(0.3, 1.0)})
    # Both call 0.45, 0.4, 0.6, 0.9 anomalous: TP 3, FP 1, FN 0.
    assert row == pytest.approx({"threshold_f1_test": 0.4, "f1_f1_test": 6 / 7, "precision_f1_test": 0.75,
                                 "recall_f1_test": 1.0, "threshold_normal": np.nextafter(0.3, 1.0),
                                 "f1_normal": 6 / 7, "precision_normal": 0.75, "recall_normal": 1.0})


def test_a_threshold_on_held_out_normal_images_costs_what_metrics_csv_says(tmp_path, demo_args, monkeypatch):
    skip_training(monkeypatch)  # the rules act on the evaluation
    assert main.main(demo_args("--threshold=normal")) == 0
    row = read_rows(tmp_path / "results" / "demo" / "metrics.csv")[0]
    assert row["threshold_rule"] == "normal" and row["threshold"] == row["threshold_normal"]
    assert {f"f1_{rule}" for rule in THRESHOLD_RULES} <= set(row)
    assert "f1_normal" in (tmp_path / "results" / "demo" / "metrics.md").read_text()
    assert main.main(demo_args("--run_name=tested")) == 0
    row = read_rows(tmp_path / "results" / "tested" / "metrics.csv")[0]
    assert row["threshold_rule"] == "f1_test" and "threshold_normal" not in row
    assert "chosen on the test set (F1-best)" in (tmp_path / "results" / "tested" / "metrics.md").read_text()
