"""One epoch of training and batched prediction on the device; shared by main.py and the benchmark."""
from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model import MRKD, drd
from model.loss import distillation_loss, gaussian_blur, image_score, level_distances, upsample_levels
from utils.errors import InputError


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


@dataclass(frozen=True)
class Objective:
    """The training loss: MRKD's Eq. (4) or DRD's three losses.

    method "mrkd": the student restores the teacher features of the clean image from the
    ILM input (ilm=False: from the clean image itself, RD4AD). method "drd": normal and
    pseudo-abnormal images both go through bottleneck and student (the pseudo-abnormal
    teacher features with Gaussian noise); kd + restoration + segmentation losses.
    """

    method: str = "mrkd"
    ilm: bool = True

    def loss(self, model: MRKD, clean: torch.Tensor, augmented: torch.Tensor,
             mask_generator: torch.Generator | None) -> torch.Tensor:
        if self.method == "mrkd":
            target, restored = model(clean, augmented if self.ilm else None, mask_generator)
            return distillation_loss(target, restored)
        target, pseudo = model.teacher_pair(clean, augmented)
        pseudo = drd.add_noise(pseudo, drd.NOISE_STD)
        restored = model.restore(model.student(model.bottleneck(target)), mask_generator)
        restored_pseudo = model.restore(model.student(model.bottleneck(pseudo)), mask_generator)
        return drd.drd_loss(target, restored, pseudo, restored_pseudo, clean, augmented)


def train_epoch(model: MRKD, loader: Iterable, optimizer: torch.optim.Optimizer, device: torch.device,
                objective: Objective, mask_generator: torch.Generator | None, execution: Execution,
                on_step: Callable[[float], None] | None = None) -> float:
    """One pass over the (clean, augmented) pairs; returns the mean loss.

    Raises Diverged, before any further step, when the loss is not finite.
    """
    model.train()
    total, steps = 0.0, 0
    for clean, augmented in loader:
        clean = execution.to_device(clean, device)
        augmented = execution.to_device(augmented, device) if objective.ilm else None
        with execution.autocast(device):
            loss = objective.loss(model, clean, augmented, mask_generator)
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


# The image score: Eq. (6), the map's maximum, or DRD's refined score.
IMAGE_SCORES = ("max", "refined")


@dataclass(frozen=True)
class Scoring:
    """How the maps and image scores are computed at test time (Sec. 3.4)."""

    image_size: int
    levels: tuple[int, ...] = (1, 2, 3)  # Eq. (5); Table 7
    sigma: float = 4.0                   # Gaussian smoothing, authors' implementation
    masks: int = 1                       # K FLM masks averaged; the paper uses one
    mask_seed: int = 111                 # seeds the test-time FLM masks
    image_score: str = "max"             # Eq. (6), or DRD's "refined" score


@torch.no_grad()
def predict(model: MRKD, loader: Iterable, device: torch.device, scoring: Scoring,
            execution: Execution) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and smoothed anomaly maps (N, S, S), Eq. (5)-(6), batched on the device.

    FLM stays on at test time (Sec. 3.4); its masks come from a CPU generator seeded
    with scoring.mask_seed, so two evaluations of one checkpoint agree exactly, on any
    device. With K masks the level distances of K independent masks are averaged.
    """
    model.eval()
    generator = torch.Generator().manual_seed(scoring.mask_seed)
    all_scores, all_maps = [], []
    for batch in loader:
        images = execution.to_device(batch[0], device)
        with execution.autocast(device):
            target, student = model.distill(images)
            runs = [level_distances(target, model.restore(student, generator), scoring.levels)
                    for _ in range(scoring.masks)]
        distances = [sum(level) / scoring.masks for level in zip(*runs)]   # [(B, h_l, w_l)]
        upsampled = upsample_levels(distances, scoring.image_size)         # (B, L, S, S)
        maps = gaussian_blur(upsampled.sum(dim=1), scoring.sigma)          # (B, S, S)
        if scoring.image_score == "refined":
            all_scores.append(drd.refined_image_score(distances, upsampled, maps))
        else:
            all_scores.append(image_score(maps))
        all_maps.append(maps)
    return torch.cat(all_scores).cpu().numpy(), torch.cat(all_maps).cpu().numpy()


def save_checkpoint(path: Path, model: MRKD, optimizer: torch.optim.Optimizer, epoch: int,
                    config: dict[str, Any]) -> None:
    """State dicts of the trained parts and the optimiser, the epoch and the configuration.

    Written to a temporary file and renamed, so a crash never leaves a broken checkpoint.
    """
    state = {
        "bottleneck": model.bottleneck.state_dict(),
        "student": model.student.state_dict(),
        "generators": model.generators.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "config": config,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path, model: MRKD, optimizer: torch.optim.Optimizer | None,
                    device: torch.device) -> dict[str, Any]:
    """Restore what save_checkpoint wrote; returns the checkpoint (epoch, config)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        for part in ("bottleneck", "student", "generators"):
            getattr(model, part).load_state_dict(state[part])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    except FileNotFoundError:
        raise InputError(f"No checkpoint at {path}; train first (without --eval_only).") from None
    except (RuntimeError, KeyError, OSError) as error:
        raise InputError(f"The checkpoint {path} does not fit this configuration or is damaged "
                         f"({type(error).__name__}: {str(error).splitlines()[0]}).") from None
    return state


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
