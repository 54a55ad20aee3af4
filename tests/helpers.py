"""Helpers shared by the tests: models with main.py's constants, reading result tables."""
import csv

from main import CONSTANTS
from model import build_model


def model_for(backbone="resnet18", weights=None, **changes):
    """build_model with main.py's defaults for the arguments a test does not change."""
    arguments = {"flm_ratio": CONSTANTS["FLM_RATIO"], "flm": CONSTANTS["FLM"], "bottleneck": CONSTANTS["BOTTLENECK"]}
    return build_model(backbone, weights, **{**arguments, **changes})


def read_rows(path):
    """The rows of a results CSV as dicts of strings."""
    with open(path) as file:
        return list(csv.DictReader(file))


def error_message(err):
    """What main.py printed last on stderr, after any progress bar (tqdm redraws with \\r)."""
    return err.split("\r")[-1]
