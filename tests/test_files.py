"""Result files written through utils.files.atomic_write: a failed write (a full disk, simulated) is one
sentence naming the file, leaves no temporary file and keeps the previous file byte for byte."""
import errno
import io
import os

import numpy as np
import pytest
import torch

from model.engine import read_checkpoint, save_checkpoint
from tests.helpers import model_for, settings_of
from utils import files, report
from utils.errors import InputError
from utils.figures import figure_overlay
from utils.predictions import Predictions

TRAINING = settings_of({"DEMO": True}).training


class NearlyFullDisk(io.FileIO):
    """A file on a disk with ROOM bytes left: a write past them puts what fits, then fails as the system does."""

    ROOM = 1000

    def write(self, data):
        if self.tell() + len(data) > self.ROOM:
            super().write(bytes(data)[:self.ROOM - self.tell()])
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


@pytest.fixture
def full_disk(monkeypatch):
    """atomic_write's files from now on are on a nearly full disk."""
    monkeypatch.setattr(files, "open", NearlyFullDisk, raising=False)


def assert_kept(path, before, error):
    """The write of `path` failed with one sentence naming it, and left its folder as it was."""
    message = str(error.value)
    assert message.startswith(f"Cannot write {path} (") and "the disk may be full" in message
    assert "\n" not in message
    assert path.read_bytes() == before
    assert sorted(entry.name for entry in path.parent.iterdir()) == [path.name]  # no .tmp left


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, full_disk, monkeypatch):
    model = model_for("resnet18")
    path = tmp_path / "checkpoints" / "bottle.pt"
    monkeypatch.setattr(NearlyFullDisk, "ROOM", 10**9)
    save_checkpoint(path, model, None, 1, TRAINING)
    before = path.read_bytes()
    monkeypatch.setattr(NearlyFullDisk, "ROOM", len(before) // 2)
    with pytest.raises(InputError) as error:
        save_checkpoint(path, model, None, 2, TRAINING)
    assert_kept(path, before, error)
    assert read_checkpoint(path, torch.device("cpu"))["epoch"] == 1  # training can resume from it


def test_torchs_runtime_error_on_a_full_disk_is_one_sentence(tmp_path, monkeypatch):
    """Writing to a path of its own, torch reports a full disk as RuntimeError, not OSError."""
    model = model_for("resnet18")
    path = tmp_path / "bottle.pt"
    save_checkpoint(path, model, None, 1, TRAINING)
    before = path.read_bytes()

    def fail_halfway(state, file):
        file.write(before[:len(before) // 2])
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", fail_halfway)
    with pytest.raises(InputError) as error:
        save_checkpoint(path, model, None, 2, TRAINING)
    assert_kept(path, before, error)
    assert f"Cannot write {path} (unexpected pos 704 vs 598);" in str(error.value)


def test_a_full_disk_keeps_the_previous_predictions_figure_and_table(tmp_path, full_disk, monkeypatch):
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), dtype=bool)
    masks[2:, 4:8, 4:8] = True
    features = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
    arguments = ("bottle", rng.random(4).astype(np.float32), np.array([0, 0, 1, 1]), ["good", "good", "crack", "crack"],
                 {"image_auroc": 1.0}, 0.5, "f1_test", masks, rng.random((4, 16, 16)).astype(np.float32),
                 rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), np.array([2, 3]), features, features)
    written = {
        tmp_path / "predictions" / "bottle.npz": lambda path: Predictions.of(*arguments).save(path),
        tmp_path / "figures" / "new.png": lambda path: figure_overlay(arguments[9][0], arguments[8][0], (0.0, 1.0),
                                                                        "new.png", path),
        tmp_path / "results" / "metrics.csv": lambda path: report.write_csv(path, ["category"], [{"category": "a"}]),
        tmp_path / "run" / "config.json": lambda path: report.write_atomically(path, "{}\n"),
    }
    for path, write in written.items():
        path.parent.mkdir(exist_ok=True)
        monkeypatch.setattr(NearlyFullDisk, "ROOM", 10**9)
        write(path)
        before = path.read_bytes()
        monkeypatch.setattr(NearlyFullDisk, "ROOM", len(before) // 2)
        with pytest.raises(InputError) as error:
            write(path)
        assert_kept(path, before, error)
    assert Predictions.load(tmp_path / "predictions" / "bottle.npz").category == "bottle"


@pytest.mark.parametrize("stage", ["fsync", "rename"])
def test_a_write_refused_at_the_last_step_keeps_the_previous_file(tmp_path, monkeypatch, stage):
    """A full quota reported only when the file is flushed to disk (network file systems), or a rename
    refused: the old file stays and the new one is gone."""
    path = tmp_path / "metrics.md"
    report.write_atomically(path, "| old |\n")
    refusal = (OSError(errno.EDQUOT, "Disk quota exceeded") if stage == "fsync"
               else PermissionError(errno.EACCES, "Permission denied"))

    def refuse(*arguments):
        raise refusal

    monkeypatch.setattr(os, {"fsync": "fsync", "rename": "replace"}[stage], refuse)
    with pytest.raises(InputError) as error:
        report.write_atomically(path, "| new |\n")
    assert str(error.value).startswith(f"Cannot write {path} ({refusal.strerror})")
    assert_kept(path, b"| old |\n", error)


def test_an_error_that_is_no_write_failure_passes_unchanged_and_leaves_nothing(tmp_path):
    path = tmp_path / "figure.png"
    with pytest.raises(KeyError):
        with files.atomic_write(path) as file:
            file.write(b"part")
            raise KeyError("a bug while drawing")
    assert list(tmp_path.iterdir()) == []
