"""Tables of several seeds: mean and spread against NumPy; results of different protocols never averaged."""
import math

import numpy as np
import pytest

from utils.metrics import METRICS
from utils.report import over_seeds, table, with_mean


def seeded_rows():
    """Two categories, three seeds each, random metrics; category b's seeds arrive out of order."""
    rng = np.random.default_rng(0)
    values = rng.uniform(0.5, 1.0, (2, 3, len(METRICS)))  # (category, seed, metric)
    rows = []
    for c, category in enumerate("ab"):
        for s in (2, 0, 1) if category == "b" else (0, 1, 2):
            rows.append({"category": category, "seed": (111, 1, 2)[s], "status": "ok",
                         **dict(zip(METRICS, values[c, s]))})
    return rows, values


def test_seeds_give_each_category_and_the_mean_their_mean_and_sample_std():
    rows, values = seeded_rows()
    merged = with_mean(over_seeds(rows))
    assert [row["category"] for row in merged] == ["a", "b", "mean"]
    order = np.argsort([111, 1, 2])  # seed order: 1, 2, 111
    for c, row in enumerate(merged[:2]):
        assert row["seeds"] == "1,2,111"
        for m, name in enumerate(METRICS):
            assert row[name] == pytest.approx(values[c, :, m].mean())
            assert row[f"{name}_std"] == pytest.approx(values[c, :, m].std(ddof=1))
            assert row[f"{name}_seeds"] == pytest.approx(values[c, order, m].tolist())
    for m, name in enumerate(METRICS):  # the mean row: categories averaged per seed, then over seeds
        per_seed = values[:, :, m].mean(axis=0)
        assert merged[2][name] == pytest.approx(per_seed.mean())
        assert merged[2][f"{name}_std"] == pytest.approx(per_seed.std(ddof=1))
    header, cells = table(over_seeds(rows), None)
    assert cells[0][1] == f"{100 * values[0, :, 0].mean():.1f} ± {100 * values[0, :, 0].std(ddof=1):.1f}"


def test_one_seed_prints_as_before():
    rows = [{"category": "a", "status": "ok", "threshold": 0.5, **dict.fromkeys(METRICS, 0.9)}]
    header, cells = table(rows, None)
    assert header == ["category", *METRICS, "threshold", "status"]
    assert cells == [["a", "90.0", "90.0", "90.0", "90.0", "0.5", "ok"], ["mean", "90.0", "90.0", "90.0", "90.0", "-", ""]]


def test_results_selected_on_the_test_set_are_never_averaged_with_fair_ones():
    fair = {"category": "a", "status": "ok", **dict.fromkeys(METRICS, 0.8)}
    selected = {"category": "b", "status": "ok, epoch 3", "protocol": "selected on the test set",
                **dict.fromkeys(METRICS, 0.99)}
    mean = with_mean([fair, selected])[-1]
    assert all(math.isnan(mean[name]) for name in METRICS)
    assert mean["status"] == "not averaged: rows of different protocols"
    selected_mean = with_mean([selected, {**selected, "category": "c"}])[-1]
    assert selected_mean["protocol"] == "selected on the test set" and selected_mean["image_auroc"] == 0.99
    assert table([selected], None)[1][0][-1] == "ok, epoch 3; selected on the test set"
