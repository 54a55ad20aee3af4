"""Helpers shared by the tests: models and settings with main.py's constants, reading result tables."""
import csv
import json

import numpy as np
import torch

import main
from model.methods import build_model
from model.settings import resolve


def model_for(backbone="resnet18", weights=None, **changes):
    """build_model with main.py's defaults for the arguments a test does not change."""
    arguments = {"flm_ratio": main.CONSTANTS["FLM_RATIO"], "flm": main.CONSTANTS["FLM"],
                 "bottleneck": main.CONSTANTS["BOTTLENECK"]}
    return build_model(backbone=backbone, weights=weights, **{**arguments, **changes})


def through(model, images, augmented=None, draws=None):
    """The target f_T,n and the restored features f_G, through the model's four steps (model/mrkd.py)."""
    target, inputs = model.encode(images, augmented)
    return target, model.restore(model.decode(model.project(inputs)), draws)


def settings_of(overrides=None, row=None):
    """main.py's settings with these overrides (and an experiment row's constants)."""
    return resolve(main.CONSTANTS, main.DEMO_CONFIG, main.METHODS, main.DATASETS, overrides or {}, row)


def read_rows(path):
    """The rows of a results CSV as dicts of strings."""
    with open(path) as file:
        return list(csv.DictReader(file))


def error_message(err):
    """What main.py printed last on stderr, after any progress bar (tqdm redraws with \\r)."""
    return err.split("\r")[-1]


# Settings added after runs were first written (each declares the value earlier runs were made
# with), and the run format itself: a run written before them lacks these keys.
LATER_KEYS = ("FORMAT", "LOSS", "PROJECTION", "PROJECTION_LEARNING_RATE", "ACCUMULATE", "THRESHOLD", "SEEDS",
              "SELECT", "CATEGORY_EPOCHS")


def as_written_before(results, checkpoints):
    """Rewrite a run's config.json and checkpoints as a version of the code before LATER_KEYS wrote them."""
    config = results / "config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k not in LATER_KEYS}))
    for path in checkpoints.glob("*.pt"):
        state = torch.load(path, weights_only=True)
        state["config"] = {k: v for k, v in state["config"].items() if k not in LATER_KEYS}
        torch.save(state, path)


def skip_training(monkeypatch):
    """main.py's epochs pass without a step (each returns a loss of 0.5): for a test of what
    surrounds the training (presets, rows, checkpoints, tables, figures), not of the training.
    The untrained weights are saved and evaluated as trained ones would be."""
    monkeypatch.setattr(main, "train_epoch", lambda *arguments, **keywords: 0.5)


def seeded_synthesis(synthesize):
    """Run a synthesis (uint8 image, rng) -> (float32 image on [0, 1], bool mask) on a random 64x64
    image with seeds 5, 5 and 6, checking that it leaves its input as it was, repeats itself for a
    seed and differs for another. Returns the input on the [0, 1] scale, the first result and its mask."""
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    original = image.copy()
    first, mask = synthesize(image, np.random.default_rng(5))
    second, mask_again = synthesize(image, np.random.default_rng(5))
    other, _ = synthesize(image, np.random.default_rng(6))
    assert np.array_equal(image, original)
    assert np.array_equal(first, second) and np.array_equal(mask, mask_again)
    assert not np.array_equal(first, other)
    assert first.dtype == np.float32 and mask.dtype == bool
    return image.astype(np.float32) / 255, first, mask
