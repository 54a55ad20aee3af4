"""The engine, the same for every method: one epoch of training, batched prediction, checkpoints.

A method is its objective (model.OBJECTIVES) and its image score (IMAGE_SCORES);
everything else here is shared by MRKD, RD4AD and DRD, main.py and the benchmark.
"""
from __future__ import annotations

import contextlib
import hashlib
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
from model.generator import MaskDraws
from model.drd import refined_image_score
from model.loss import anomaly_map, gaussian_blur, image_score, level_distances
from utils.config import check
from utils.errors import InputError
from utils.files import atomic_write

# A training objective: (model, clean images, ILM inputs or None, FLM mask draws) -> loss.
Objective = Callable[[MRKD, torch.Tensor, "torch.Tensor | None", "MaskDraws | None"], torch.Tensor]


class Diverged(Exception):
    """The training loss became NaN or infinite."""


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' is a CUDA GPU when there is one, else the CPU. 'auto' and 'cuda' give the
    process of local rank r (torchrun) GPU r modulo the GPU count; 'cuda:N' is GPU N."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"Device {name!r} was asked for but PyTorch sees no CUDA GPU; use --device=cpu.")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
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
    images and weights channels_last; on a GPU with bf16 it also runs Adam as one fused
    kernel and replays each training step as a captured CUDA graph (`capture`). It
    changes the numbers within bf16 rounding, not the method.
    """

    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False
    capture: bool = False

    def autocast(self, device: torch.device, cache: bool = True) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype, cache_enabled=cache)

    def to_device(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        return images.to(device, non_blocking=True, memory_format=memory_format)

    def optimizer(self, parameters: list[torch.nn.Parameter], learning_rate: float, betas: tuple[float, ...],
                  weight_decay: float) -> torch.optim.Adam:
        """Adam; with `capture` one fused kernel whose step count lives on the GPU, as a graph needs."""
        fused = {"fused": True, "capturable": True} if self.capture else {}
        return torch.optim.Adam(parameters, lr=learning_rate, betas=betas, weight_decay=weight_decay, **fused)


def execution_for(device: torch.device, fast: bool) -> Execution:
    """The faithful fp32 path, deterministic; or with `fast` the fast path (see Execution).

    Faithful: cuDNN's deterministic algorithms and no autotuner, so that two runs, and a
    resumed and an uninterrupted run, are equal on a GPU too (ops without a deterministic
    CUDA kernel, such as the bilinear upsampling in DRD's segmentation loss, warn).
    Fast: cuDNN's autotuner, which gives up bit-exact repeatability.
    """
    torch.use_deterministic_algorithms(not fast, warn_only=True)
    torch.backends.cudnn.deterministic = not fast
    torch.backends.cudnn.benchmark = fast and device.type == "cuda"
    if not fast:
        return Execution()
    if device.type == "cpu" or torch.cuda.is_bf16_supported():
        return Execution(torch.bfloat16, channels_last=True, capture=device.type == "cuda")
    return Execution(torch.float16, torch.amp.GradScaler(device.type), channels_last=True)


class StaticDraws(MaskDraws):
    """The FLM draws of a captured step: buffers the graph reads, refilled before each replay.

    The buffers are made while one eager step records the shapes it draws, before the
    capture: a buffer allocated during the capture would be re-initialised by every replay.
    """

    def __init__(self, generator: torch.Generator):
        super().__init__(generator)
        self.buffers: list[torch.Tensor] = []
        self.served: int | None = None  # None while recording

    def uniform(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if self.served is None:
            self.buffers.append(torch.empty(shape, device=device))
            return super().uniform(shape, device)
        self.served += 1
        return self.buffers[self.served - 1]

    def refill(self, source: MaskDraws) -> None:
        """Draw from `source` what the eager step would draw, in its order, and serve the buffers."""
        for buffer in self.buffers:
            buffer.copy_(source.uniform(tuple(buffer.shape), torch.device("cpu")))
        self.served = 0


class CapturedStep:
    """The fast path's training step on a GPU (objective, backward, Adam), captured once as a
    CUDA graph and replayed for every batch of the captured shape.

    Why: a step of the wide net launches a few thousand kernels, and issuing them one by
    one costs the CPU more time than the GPU needs to run them. The graph reads static
    buffers: each batch is copied in, and the FLM draws are refilled from the epoch's
    MaskDraws in the order the eager step draws them, so the masks are the eager ones.
    A batch of another shape (an epoch's last) runs eagerly on the same weights and Adam.
    The loss is checked after the step, so a diverging step has already updated the
    weights (the checkpoint on disk is still the last good one).
    """

    def __init__(self, model: MRKD, optimizer: torch.optim.Optimizer, objective: Objective, execution: Execution):
        self.model, self.optimizer, self.objective, self.execution = model, optimizer, objective, execution
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, clean: torch.Tensor, augmented: torch.Tensor | None, draws: MaskDraws) -> torch.Tensor:
        """Run one step on the batch; returns its loss (a tensor on the GPU)."""
        if self.graph is None:
            self.capture(clean, augmented)
        if clean.shape != self.clean.shape:
            return self.eager(clean, augmented, draws)
        self.clean.copy_(clean)
        if augmented is not None:
            self.augmented.copy_(augmented)
        self.draws.refill(draws)
        self.graph.replay()
        return self.loss

    def eager(self, clean: torch.Tensor, augmented: torch.Tensor | None, draws: MaskDraws) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=False)  # the graph's gradient buffers stay where it reads them
        # No weight-cast cache, as in the graph: the same autocast state, so torch.compile's
        # guards hold and nothing is compiled while the graph is captured.
        with self.execution.autocast(clean.device, cache=False):
            loss = self.objective(self.model, clean, augmented, draws)
        loss.backward()
        self.optimizer.step()
        return loss

    def capture(self, clean: torch.Tensor, augmented: torch.Tensor | None) -> None:
        """Warm up on a side stream, put weights and Adam's state back, then record one step."""
        self.clean = clean.clone(memory_format=torch.preserve_format)
        self.augmented = None if augmented is None else augmented.clone(memory_format=torch.preserve_format)
        saved_weights = {name: value.clone() for name, value in self.model.state_dict().items()}
        saved_state = {p: {k: v.clone() for k, v in state.items()} for p, state in self.optimizer.state.items()}
        self.draws = StaticDraws(torch.Generator().manual_seed(0))  # the first warm-up step records
        warm_up = MaskDraws(torch.Generator().manual_seed(1))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.optimizer.zero_grad(set_to_none=True)
                self.eager(self.clean, self.augmented, self.draws)
                self.draws.refill(warm_up)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.no_grad():  # in place: the graph records these tensors' addresses
            for name, value in self.model.state_dict().items():
                value.copy_(saved_weights[name])
            for parameter, state in self.optimizer.state.items():
                for key, value in state.items():
                    if parameter in saved_state:
                        value.copy_(saved_state[parameter][key])
                    else:  # a fresh Adam: no step taken yet
                        value.zero_()
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            with self.execution.autocast(clean.device, cache=False):  # no weight-cast cache across replays
                self.loss = self.objective(self.model, self.clean, self.augmented, self.draws)
            self.loss.backward()
            self.optimizer.step()


def train_epoch(model: MRKD, loader: Iterable, optimizer: torch.optim.Optimizer, device: torch.device,
                objective: Objective, draws: MaskDraws | None, execution: Execution,
                on_step: Callable[[float], None] | None = None, captured: CapturedStep | None = None) -> float:
    """One pass over the batches, (clean,) or (clean, augmented); returns the mean loss.

    captured: the step as a CUDA graph (the fast path on a GPU), kept across epochs.
    Raises Diverged, before any further step, when the loss is not finite.
    """
    model.train()
    total, steps = 0.0, 0
    for clean, *rest in loader:
        clean = execution.to_device(clean, device)
        augmented = execution.to_device(rest[0], device) if rest else None
        if captured is not None:
            value = captured(clean, augmented, draws).item()
        else:
            with execution.autocast(device):
                loss = objective(model, clean, augmented, draws)
            value = loss.item()
        if not np.isfinite(value):
            raise Diverged(f"the loss became {value} at step {steps + 1}")
        if captured is None:
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
    # Test batches come in few shapes, each seen a few times: tuning cuDNN for each costs more than it saves.
    autotune, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    for batch in loader:
        draws = MaskDraws(image_generators(batch[0], scoring.seed))
        images = execution.to_device(batch[0], device)
        with execution.autocast(device):
            target, student = model.distill(images)
            runs = [level_distances(target, model.restore(student, draws), scoring.score_levels)
                    for _ in range(scoring.eval_masks)]
        distances = [sum(level) / scoring.eval_masks for level in zip(*runs)]   # [(B, h_l, w_l)]
        maps = gaussian_blur(anomaly_map(distances, scoring.image_size), scoring.sigma)  # (B, S, S)
        all_scores.append(IMAGE_SCORES[scoring.image_score](distances, maps))
        all_maps.append(maps)
    torch.backends.cudnn.benchmark = autotune
    return torch.cat(all_scores).cpu().numpy(), torch.cat(all_maps).cpu().numpy()


def save_checkpoint(path: Path, model: MRKD, optimizer: torch.optim.Optimizer | None, epoch: int,
                    config: dict[str, Any]) -> None:
    """State dicts of the trained parts (and of the optimiser unless None), the epoch and the
    configuration that shaped them.

    Written through utils.files.atomic_write: a failed write (a full disk) is an InputError naming
    the file, and the previous checkpoint stays as it was, so training can resume from it.
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
    with atomic_write(path) as file:
        torch.save(state, file)


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

    The masks are the ones predict draws for these images. Both are unit-normalised over
    the channels: the cosine loss leaves the norm of the restored features free, and the
    anomaly map sees only their directions.
    """
    model.eval()
    target, student = model.distill(images.to(device))
    restored = model.restore(student, MaskDraws(image_generators(images, mask_seed)))
    return tuple(F.normalize(f[0].float(), dim=1).cpu().numpy() for f in (target, restored))
