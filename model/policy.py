"""What a command may do with a run: claim its folders, resume or use its checkpoints.

main.py calls these before and while it trains; --predict and --export use `usable`.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from model.engine import Trained, read_trained
from model.settings import Settings, Training
from utils.errors import InputError
from utils.files import write_atomically
from utils.paper import RDPP_EPOCHS
from utils.runs import RunFolders, RunLock, make_folder


def category_settings(settings: Settings, category: str) -> Settings:
    """A category's settings: with CATEGORY_EPOCHS=rdpp, the epochs RD++'s release trains it for."""
    if not settings.run.category_epochs:
        return settings
    return replace(settings, training=replace(settings.training,
                                              epochs=RDPP_EPOCHS.get(category, settings.training.epochs)))


def resumable(checkpoint: Path, device: torch.device, training: Training, mmap: bool = False) -> Trained:
    """The checkpoint a resume goes on from, refused with one sentence when it cannot: other
    Training settings, or a finished training (its optimiser state dropped) asked for more epochs.
    mmap=True: a check only, which reads little more than the settings (read_checkpoint)."""
    trained = read_trained(checkpoint, device, training, "resume", mmap)
    if trained.epoch < training.epochs and "optimizer" not in trained.state:
        raise InputError(f"{checkpoint} holds a finished training ({trained.epoch} epochs) without its optimiser "
                         f"state; train a new run to go on to {training.epochs} epochs.")
    return trained


def usable(checkpoint: Path, device: torch.device, settings: Settings, use: str) -> tuple[Trained, str]:
    """The checkpoint an evaluation, prediction or export uses (`use`, utils/config.py: USES), and ""
    or the note that it has not finished its epochs ("partial: epoch 1 of 3"), refused with one
    sentence unless --partial=True (never for an export)."""
    trained = read_trained(checkpoint, device, settings.training, use)
    if trained.finished:
        return trained, ""
    if not settings.mode.partial:
        instead = "" if settings.mode.export else (f", or {'evaluate' if use == 'evaluate' else 'score with'} it as it "
                                                   f"is with --partial=True")
        raise InputError(f"{checkpoint} has trained {trained.epoch} of {trained.training.epochs} epochs; finish it "
                         f"with --run_name={settings.run.run_name} --resume=True{instead}.")
    return trained, f"partial: epoch {trained.epoch} of {trained.training.epochs}"


def claim(settings: Settings, folders: RunFolders, lock: RunLock, checkpoints: dict[Path, Any]) -> None:
    """Take the run's lock, check that this command may use the run's folders, then create them
    and, for a training, write config.json.

    A new training refuses a run that exists (one that wrote checkpoints or predictions),
    unless --overwrite=True, or --demo replacing an earlier demo run; --resume and
    --eval_only need it to exist, and a resume needs each of its `checkpoints` that exists to
    accept the Training settings it maps to: config.json changes only when a training starts
    or resumes.
    """
    mode, run = settings.mode, settings.run
    missing = (f"Run {run.run_name!r} has no checkpoint to {mode.use} in {folders.checkpoints}; train it (anew, "
               f"without --{(mode.use or '').replace('evaluate', 'eval_only')}), or give the --run_name and "
               f"--checkpoint_dir it was trained with.")
    if mode.use is not None and not folders.written():  # refused before the lock makes its folder
        raise InputError(missing)
    lock.acquire()
    exists = folders.written()
    if mode.use is None and exists:
        earlier_demo = (folders.config() or {}).get("DEMO") is True
        if not (mode.overwrite or (run.demo and earlier_demo)):
            raise InputError(f"A run named {run.run_name!r} exists in {folders.results}; choose another --run_name, "
                             f"or --resume=True, --eval_only=True or --overwrite=True.")
        folders.replace()
    if mode.use is not None and not exists:  # another process replaced it meanwhile
        raise InputError(missing)
    if mode.resume:
        for checkpoint, training in checkpoints.items():
            if checkpoint.exists():
                resumable(checkpoint, torch.device("cpu"), training, mmap=True)  # train_category reads it
    make_folder(folders.results)
    if mode.use in (None, "resume"):
        write_atomically(folders.results / "config.json", json.dumps(settings.record(), indent=2) + "\n")
