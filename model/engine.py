"""The engine, the same for every method: one epoch of training, batched prediction, checkpoints.

A method is its objective (model.OBJECTIVES) and its image score (IMAGE_SCORES);
everything else here is shared by MRKD, RD4AD and DRD, main.py and the benchmark.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model import MRKD
from model.drd import refined_image_score
from model.loss import anomaly_map, gaussian_blur, image_score, level_distances
from utils.config import check
from utils.errors import InputError

# A training objective: (model, clean images, ILM inputs or None, FLM mask generator) -> loss.
Objective = Callable[[MRKD, torch.Tensor, "torch.Tensor | None", "torch.Generator | None"], torch.Tensor]


class Diverged(Exception):
    """The training loss became NaN or infinite."""


def pick_device(name: str) -> torch.device:
    """'auto' is the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"Device {name!r} was asked for but PyTorch sees no CUDA GPU; use --device=cpu.")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch, at the start of every category."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Execution:
    """How the networks run: plain fp32 (the faithful path, the default) or the fast path.

    The fast path autocasts to `dtype` (bf16, or fp16 with a gradient scaler) and keeps
    images and weights channels_last. It changes the numbers within noise, not the method.
    """

    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def to_device(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        return images.to(device, non_blocking=True, memory_format=memory_format)


def execution_for(device: torch.device, fast: bool) -> Execution:
    """fp32 unless `fast`: then bf16 where the device has it (else fp16 with a scaler), channels_last,
    and cuDNN's autotuner (which gives up bit-exact repeatability)."""
    if not fast:
        return Execution()
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if device.type == "cpu" or torch.cuda.is_bf16_supported():
        return Execution(torch.bfloat16, channels_last=True)
    return Execution(torch.float16, torch.amp.GradScaler(device.type), channels_last=True)


def train_epoch(model: MRKD, loader: Iterable, optimizer: torch.optim.Optimizer, device: torch.device,
                objective: Objective, mask_generator: torch.Generator | None, execution: Execution,
                on_step: Callable[[float], None] | None = None) -> float:
    """One pass over the batches, (clean,) or (clean, augmented); returns the mean loss.

    Raises Diverged, before any further step, when the loss is not finite.
    """
    model.train()
    total, steps = 0.0, 0
    for clean, *rest in loader:
        clean = execution.to_device(clean, device)
        augmented = execution.to_device(rest[0], device) if rest else None
        with execution.autocast(device):
            loss = objective(model, clean, augmented, mask_generator)
        value = loss.item()
        if not np.isfinite(value):
            raise Diverged(f"the loss became {value} at step {steps + 1}")
        optimizer.zero_grad(set_to_none=True)
        if execution.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            execution.scaler.scale(loss).backward()
            execution.scaler.step(optimizer)
            execution.scaler.update()
        total, steps = total + value, steps + 1
        if on_step is not None:
            on_step(value)
    return total / max(steps, 1)


# The image score from the level distances and the smoothed map: Eq. (6), the map's
# maximum, or DRD's refined score.
IMAGE_SCORES = {
    "max": lambda distances, maps: image_score(maps),
    "refined": refined_image_score,
}


@dataclass(frozen=True)
class Scoring:
    """How maps and image scores are computed at test time (Sec. 3.4): main.py's evaluation
    constants, by their lower-case names. Rows of an experiment that differ only here
    share one training."""

    image_size: int
    score_levels: tuple[int, ...]  # Eq. (5); Table 7
    sigma: float                   # Gaussian smoothing
    eval_masks: int                # K FLM masks averaged
    image_score: str               # a key of IMAGE_SCORES
    seed: int                      # seeds the test-time FLM masks

    def __post_init__(self) -> None:
        rules = [
            (len(self.score_levels) > 0 and set(self.score_levels) <= {1, 2, 3},
             "SCORE_LEVELS must be a non-empty subset of 1,2,3"),
            (self.sigma >= 0, "SIGMA must be at least 0"),
            (self.eval_masks >= 1, "EVAL_MASKS must be at least 1"),
            (self.image_score in IMAGE_SCORES, f"IMAGE_SCORE must be one of {', '.join(IMAGE_SCORES)}"),
        ]
        check(rules)


def image_generators(images: torch.Tensor, seed: int) -> list[torch.Generator]:
    """One CPU generator per image of a batch (B, 3, S, S), seeded by `seed` and the image's values.

    Test-time FLM masks drawn from them depend on nothing but the image: not on the batch
    size, the order, nor the other images scored with it. An image scored alone, in a
    folder of new images or in its test set gets the same masks, hence the same score.
    """
    generators = []
    for image in images.detach().cpu():
        digest = hashlib.blake2b(seed.to_bytes(8, "little", signed=True), digest_size=8)
        digest.update(image.contiguous().numpy().tobytes())
        generators.append(torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little")))
    return generators


@torch.no_grad()
def predict(model: MRKD, loader: Iterable, device: torch.device, scoring: Scoring,
            execution: Execution) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and smoothed anomaly maps (N, S, S), Eq. (5)-(6), batched on the device.

    FLM stays on at test time (Sec. 3.4); each image's masks come from a CPU generator
    seeded with scoring.seed and the image itself (image_generators), so one checkpoint
    gives an image the same score on every call, in any batch, on any device. With K
    masks the level distances of K independent masks are averaged.
    """
    model.eval()
    all_scores, all_maps = [], []
    for batch in loader:
        generators = image_generators(batch[0], scoring.seed)
        images = execution.to_device(batch[0], device)
        with execution.autocast(device):
            target, student = model.distill(images)
            runs = [level_distances(target, model.restore(student, generators), scoring.score_levels)
                    for _ in range(scoring.eval_masks)]
        distances = [sum(level) / scoring.eval_masks for level in zip(*runs)]   # [(B, h_l, w_l)]
        maps = gaussian_blur(anomaly_map(distances, scoring.image_size), scoring.sigma)  # (B, S, S)
        all_scores.append(IMAGE_SCORES[scoring.image_score](distances, maps))
        all_maps.append(maps)
    return torch.cat(all_scores).cpu().numpy(), torch.cat(all_maps).cpu().numpy()


def save_checkpoint(path: Path, model: MRKD, optimizer: torch.optim.Optimizer | None, epoch: int,
                    config: dict[str, Any]) -> None:
    """State dicts of the trained parts (and of the optimiser unless None), the epoch and the
    configuration that shaped them.

    Written to a temporary file and renamed, so a crash never leaves a broken checkpoint.
    """
    state = {
        "bottleneck": model.bottleneck.state_dict(),
        "student": model.student.state_dict(),
        "generators": model.generators.state_dict(),
        "epoch": epoch,
        "config": config,
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def read_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """What save_checkpoint wrote, tensors on the device."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"No checkpoint at {path}; train first (without --eval_only).") from None
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as error:
        raise InputError(f"The checkpoint {path} is damaged ({type(error).__name__}); delete it and train "
                         f"again.") from None


def load_weights(model: MRKD, state: dict[str, Any], path: Path) -> None:
    """Put a checkpoint's trained parts into the model."""
    try:
        for part in ("bottleneck", "student", "generators"):
            getattr(model, part).load_state_dict(state[part])
    except (RuntimeError, KeyError) as error:
        raise InputError(f"The checkpoint {path} does not fit this model "
                         f"({type(error).__name__}: {str(error).splitlines()[0]}).") from None


@torch.no_grad()
def level1_features(model: MRKD, images: torch.Tensor, device: torch.device,
                    mask_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Level-1 features of a few images for Fig. 9: the student's input f_T^1 and the restored f_G^1, (k, C, h, w).

    Both are unit-normalised over the channels: the cosine loss leaves the norm of the
    restored features free, and the anomaly map sees only their directions.
    """
    model.eval()
    target, student = model.distill(images.to(device))
    restored = model.restore(student, torch.Generator().manual_seed(mask_seed))
    return tuple(F.normalize(f[0].float(), dim=1).cpu().numpy() for f in (target, restored))
