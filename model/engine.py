"""The engine, the same for every method: building a model, the training step, batched scoring, checkpoints.

A method is its objective and its image score (model/methods.py); everything else here is
shared by every method, main.py, --predict and the benchmark.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.generator import HashedDraws, MaskDraws
from model.loss import anomaly_map, gaussian_blur, level_distances
from model.methods import IMAGE_SCORES, Objective, build_model
from model.mrkd import MRKD
from model.settings import Machine, Scoring, Training
from utils.config import FORMAT
from utils.errors import InputError
from utils.files import atomic_write

# cuBLAS repeats its results only with a fixed workspace, which the deterministic algorithms of the
# faithful path (execution_for) require; set on import, before torch starts CUDA, for every command
# and tool that builds a model here (main.py, the benchmark, the GPU check's steps).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


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

    The fast path autocasts to bf16 and keeps images and weights channels_last; on a GPU
    it also runs Adam as one fused kernel and replays each training step as a captured
    CUDA graph (`capture`). It changes the numbers within bf16 rounding, not the method.
    """

    dtype: torch.dtype | None = None
    channels_last: bool = False
    capture: bool = False

    def autocast(self, device: torch.device, cache: bool = True) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype, cache_enabled=cache)

    def to_device(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        return images.to(device, non_blocking=True, memory_format=memory_format)

    def optimizer(self, model: MRKD, training: Training) -> torch.optim.Adam:
        """Adam over the trained parts (Sec. 4.1), RD++'s projection at its own learning rate (its
        authors' second Adam: Adam is per parameter, so one Adam with two groups is the same);
        with `capture` one fused kernel whose step count lives on the GPU, as a graph needs."""
        groups = [{"params": [p for name, part in model.trained_parts().items() if name != "projection"
                              for p in part.parameters()]}]
        if model.projection is not None:
            groups.append({"params": list(model.projection.parameters()), "lr": training.projection_learning_rate})
        fused = {"fused": True, "capturable": True} if self.capture else {}
        return torch.optim.Adam(groups, lr=training.learning_rate, betas=training.betas,
                                weight_decay=training.weight_decay, **fused)


def execution_for(device: torch.device, fast: bool) -> Execution:
    """The faithful fp32 path, deterministic; or with `fast` the fast path (see Execution).

    Faithful: cuDNN's deterministic algorithms and no autotuner, so that two runs, and a
    resumed and an uninterrupted run, are equal on a GPU too (ops without a deterministic
    CUDA kernel, such as the bilinear upsampling in DRD's segmentation loss, warn).
    Fast: cuDNN's autotuner, which gives up bit-exact repeatability; on a GPU without bf16
    (before Ampere) fp32 with channels_last and the autotuner, since fp16 would need a
    gradient scaler that no measured device of this project needs.
    """
    torch.use_deterministic_algorithms(not fast, warn_only=True)
    torch.backends.cudnn.deterministic = not fast
    torch.backends.cudnn.benchmark = fast and device.type == "cuda"
    if not fast:
        return Execution()
    if device.type == "cpu" or torch.cuda.is_bf16_supported():
        return Execution(torch.bfloat16, channels_last=True, capture=device.type == "cuda")
    return Execution(channels_last=True)


class Compilation:
    """COMPILE=True: torch.compile of each part of the model, paid once per process, its cost measured.

    Dynamo keeps a part's compiled graphs on the code of its class's forward, guarded by the
    shapes, dtypes, grad mode and module structure it saw, not by the module: the next
    category's model, of the same shapes, runs the graphs the first category compiled. A part
    compiles about three graphs (training at the batch size, any other batch size as one
    graph of dynamic batch, evaluation), under Dynamo's limit of 8 per code; a model of another
    architecture or image size (an experiment's next row) starts from torch.compiler.reset(), so
    that the limit holds in any run. Each part compiles with fullgraph=True: a graph break, or
    the limit reached, is an error, never a silent fallback to eager code.

    Across processes (the ranks of a run, a rerun) PyTorch's on-disk caches (Inductor's FX graph
    cache and AOTAutograd's, under TORCHINDUCTOR_CACHE_DIR, by default /tmp/torchinductor_<user>)
    spare most of the work.

    seconds, compilations: what compiling has cost this process so far, as PyTorch's compile
    callbacks report it: each frame Dynamo compiles, and each backward graph compiled at its first
    backward pass. backend: torch.compile's; the CPU tests use "aot_eager" (Dynamo and AOTAutograd
    without Inductor's code generation, which takes minutes on a 2-core CPU).
    """

    def __init__(self, backend: str = "inductor") -> None:
        self.backend = backend
        self.seconds, self.compilations = 0.0, 0
        self.architecture: tuple | None = None
        self.started = 0.0

    def __call__(self, model: MRKD, architecture: tuple) -> None:
        """Compile the model's parts in place; architecture: what fixes their shapes (build's key)."""
        if architecture != self.architecture:
            torch.compiler.reset()  # an experiment's rows run one after another: the old graphs are done
            self.architecture = architecture
        callbacks = torch._dynamo.callback_handler  # reset() clears them too
        if self.start not in callbacks.start_callbacks:
            callbacks.register_start_callback(self.start)
            callbacks.register_end_callback(self.end)
        for part in (model.teacher, *model.trained_parts().values()):  # each, as training and scoring call them apart
            part.compile(backend=self.backend, fullgraph=True)

    def report(self, category: str, before: tuple[float, int]) -> str:
        """The line of what compiling cost since `before` (seconds, compilations), and this process's total."""
        return (f"{category} torch.compile: {self.compilations - before[1]} compilations, "
                f"{self.seconds - before[0]:.1f} s (this process: {self.compilations}, {self.seconds:.1f} s)")

    def start(self, *_) -> None:
        self.started = time.perf_counter()

    def end(self, *_) -> None:
        self.seconds += time.perf_counter() - self.started
        self.compilations += 1


COMPILATION = Compilation()  # one per process, as Dynamo's caches are


def build(training: Training, machine: Machine, device: torch.device) -> tuple[MRKD, Execution]:
    """The model of the Training settings on the device, and how it runs (faithful or fast)."""
    model = build_model(backbone=training.backbone, weights=training.weights, bottleneck=training.bottleneck,
                        flm=training.flm, flm_ratio=training.flm_ratio, projection=training.projection).to(device)
    execution = execution_for(device, training.fast)
    if execution.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if machine.compile:
        COMPILATION(model, (device, training.backbone, training.bottleneck, training.flm, training.projection,
                            training.image_size, execution))
    return model, execution


class Step:
    """One training step of Algorithm 1: the objective, backward and Adam. The eager path calls
    it; the fast path on a GPU records this same call as a CUDA graph (CapturedStep).

    With `accumulate` k > 1 (RD++'s authors use 2) Adam steps on every k-th batch, on the
    gradients summed over the k batches, undivided, as they do. No weight-cast cache under
    autocast, as a graph needs (a cache would outlive the replay), and gradients zeroed in
    place, where a graph reads them.
    """

    def __init__(self, model: MRKD, optimizer: torch.optim.Optimizer, objective: Objective, execution: Execution,
                 accumulate: int = 1):
        self.model, self.optimizer, self.objective, self.execution = model, optimizer, objective, execution
        self.accumulate, self.pending = accumulate, 0  # batches whose gradients wait for Adam

    def __call__(self, clean: torch.Tensor, augmented: torch.Tensor | None, draws: MaskDraws | None) -> torch.Tensor:
        """Returns the batch's loss (a tensor on the device), once its gradients are in (and applied)."""
        with self.execution.autocast(clean.device, cache=False):
            loss = self.objective(self.model, clean, augmented, draws)
        loss.backward()
        self.pending += 1
        if self.pending == self.accumulate:
            self.flush()
        return loss

    def flush(self) -> None:
        """Adam on the gradients gathered so far (an epoch's last batches too, so that a resumed
        run equals an uninterrupted one), then zero them."""
        if self.pending:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=False)
            self.pending = 0


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
    """The fast path's Step on a GPU, captured once as a CUDA graph and replayed for every batch
    of the captured shape.

    Why: a step of the wide net launches a few thousand kernels, and issuing them one by
    one costs the CPU more time than the GPU needs to run them. The graph reads static
    buffers: each batch is copied in, and the FLM draws are refilled from the epoch's
    MaskDraws in the order the eager step draws them, so the masks are the eager ones.
    A batch of another shape (an epoch's last) runs the eager Step on the same weights and Adam.
    """

    def __init__(self, step: Step):
        self.step = step
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, clean: torch.Tensor, augmented: torch.Tensor | None, draws: MaskDraws) -> torch.Tensor:
        if self.graph is None:
            self.capture(clean, augmented)
        if clean.shape != self.clean.shape:
            return self.step(clean, augmented, draws)
        self.clean.copy_(clean)
        if augmented is not None:
            self.augmented.copy_(augmented)
        self.draws.refill(draws)
        self.graph.replay()
        return self.loss

    def capture(self, clean: torch.Tensor, augmented: torch.Tensor | None) -> None:
        """Warm up on a side stream, put weights and Adam's state back, then record one step."""
        model, optimizer = self.step.model, self.step.optimizer
        self.clean = clean.clone(memory_format=torch.preserve_format)
        self.augmented = None if augmented is None else augmented.clone(memory_format=torch.preserve_format)
        saved_weights = {name: value.clone() for name, value in model.state_dict().items()}
        saved_state = {p: {k: v.clone() for k, v in state.items()} for p, state in optimizer.state.items()}
        self.draws = StaticDraws(torch.Generator().manual_seed(0))  # the first warm-up step records
        warm_up = MaskDraws(torch.Generator().manual_seed(1))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.step(self.clean, self.augmented, self.draws)
                self.draws.refill(warm_up)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.no_grad():  # in place: the graph records these tensors' addresses
            for name, value in model.state_dict().items():
                value.copy_(saved_weights[name])
            for parameter, state in optimizer.state.items():
                for key, value in state.items():
                    value.copy_(saved_state[parameter][key])
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self.step(self.clean, self.augmented, self.draws)


@dataclass
class Trainer:
    """What every epoch of one category's training needs: the model, its step (eager or
    captured, kept across epochs), how it runs, and where."""

    model: MRKD
    step: Step | CapturedStep
    execution: Execution
    device: torch.device

    @classmethod
    def of(cls, model: MRKD, objective: Objective, execution: Execution, device: torch.device,
           training: Training) -> Trainer:
        step = Step(model, execution.optimizer(model, training), objective, execution, training.accumulate)
        captured = execution.capture and training.accumulate == 1  # a graph replays whole steps only
        return cls(model, CapturedStep(step) if captured else step, execution, device)

    @property
    def eager(self) -> Step:
        return self.step.step if isinstance(self.step, CapturedStep) else self.step

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.eager.optimizer


def train_epoch(trainer: Trainer, loader: Iterable, draws: MaskDraws | None,
                on_step: Callable[[float], None] | None = None) -> float:
    """One pass over the batches, (clean,) or (clean, augmented); returns the mean loss.

    Raises Diverged when a step's loss is not finite (that step has updated the weights;
    the checkpoint on disk is still the last good one).
    """
    trainer.model.train()
    total, steps = 0.0, 0
    for clean, *rest in loader:
        clean = trainer.execution.to_device(clean, trainer.device)
        augmented = trainer.execution.to_device(rest[0], trainer.device) if rest else None
        value = trainer.step(clean, augmented, draws).item()
        if not np.isfinite(value):
            raise Diverged(f"the loss became {value} at step {steps + 1}")
        total, steps = total + value, steps + 1
        if on_step is not None:
            on_step(value)
    trainer.eager.flush()
    return total / max(steps, 1)


def score_images(model: MRKD, images: torch.Tensor, scoring: Scoring, draws: MaskDraws
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Image scores (B,) and smoothed anomaly maps (B, S, S) of a batch (B, 3, S, S), Eq. (5)-(6).

    FLM stays on at test time (Sec. 3.4); with K masks the level distances of K independent
    masks are averaged. The maps and scores are computed in fp32 whatever autocast is on.
    """
    target, _ = model.encode(images)
    decoded = model.decode(model.project(target))  # f_S, restored once per mask
    runs = [level_distances(target, model.restore(decoded, draws), scoring.score_levels)
            for _ in range(scoring.eval_masks)]
    distances = [sum(level) / scoring.eval_masks for level in zip(*runs)]   # [(B, h_l, w_l)]
    with torch.autocast(images.device.type, enabled=False):
        maps = gaussian_blur(anomaly_map(distances, images.shape[-1]), scoring.sigma)  # (B, S, S)
        return IMAGE_SCORES[scoring.image_score](distances, maps), maps


@torch.no_grad()
def predict(model: MRKD, loader: Iterable, device: torch.device, scoring: Scoring, execution: Execution,
            seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and smoothed anomaly maps (N, S, S) of the batches (images first), on the device.

    Each image's masks are hashed from `seed` and the image itself (HashedDraws), so one
    checkpoint gives an image the same score on every call, in any batch, on any device, and
    in the exported ONNX graph (model/export.py).
    """
    model.eval()
    all_scores, all_maps = [], []
    # Test batches come in few shapes, each seen a few times: tuning cuDNN for each costs more than it saves.
    autotune, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    for batch in loader:
        images = execution.to_device(batch[0], device)
        with execution.autocast(device):
            scores, maps = score_images(model, images, scoring, HashedDraws(images, seed))
        all_scores.append(scores)
        all_maps.append(maps)
    torch.backends.cudnn.benchmark = autotune
    return torch.cat(all_scores).cpu().numpy(), torch.cat(all_maps).cpu().numpy()


def save_checkpoint(path: Path, model: MRKD, optimizer: torch.optim.Optimizer | None, epoch: int,
                    training: Training) -> None:
    """State dicts of the trained parts (and of the optimiser unless None), the epoch, and the
    Training settings that shaped them with the run format (`config`).

    Written through utils.files.atomic_write: a failed write (a full disk) is an InputError naming
    the file, and the previous checkpoint stays as it was, so training can resume from it.
    """
    state = {
        **{name: part.state_dict() for name, part in model.trained_parts().items()},
        "epoch": epoch,
        "config": {"FORMAT": FORMAT, **training.record()},
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        torch.save(state, file)


def read_checkpoint(path: Path, device: torch.device, mmap: bool = False) -> dict[str, Any]:
    """What save_checkpoint wrote, tensors on the device; mmap=True (CPU): the tensors are mapped,
    read from disk only when used (a check of the settings reads little of a large checkpoint)."""
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise InputError(f"No checkpoint at {path}; train first (without --eval_only).") from None
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as error:
        raise InputError(f"The checkpoint {path} is damaged ({type(error).__name__}); delete it and train "
                         f"again.") from None


@dataclass(frozen=True)
class Trained:
    """A checkpoint as read: its state, its Training settings, the epoch it reached."""

    state: dict[str, Any]
    training: Training
    epoch: int

    @property
    def finished(self) -> bool:
        """Whether it holds the weights after its last epoch (an unfinished one keeps its optimiser)."""
        return self.epoch >= self.training.epochs and "optimizer" not in self.state


def read_trained(path: Path, device: torch.device, training: Training, use: str, mmap: bool = False) -> Trained:
    """A checkpoint (read as read_checkpoint does), refused with one sentence when it was trained with
    Training settings other than `training` in a field that may not differ for `use` (utils/config.py: USES)."""
    state = read_checkpoint(path, device, mmap)
    recorded = Training.from_record(state.get("config", {}), str(path))
    conflicts = training.conflicts(recorded, use)
    if conflicts:
        raise InputError(f"Cannot {use} with {path}: it was trained with other settings ({'; '.join(conflicts)}); "
                         f"use the settings it was trained with, or another --run_name.")
    return Trained(state, recorded, int(state["epoch"]))


def load_weights(model: MRKD, trained: Trained, path: Path) -> None:
    """Put a checkpoint's trained parts into the model."""
    try:
        for name, part in model.trained_parts().items():
            part.load_state_dict(trained.state[name])
    except (RuntimeError, KeyError) as error:
        raise InputError(f"The checkpoint {path} does not fit this model "
                         f"({type(error).__name__}: {str(error).splitlines()[0]}).") from None


@torch.no_grad()
def level1_features(trainer: Trainer, images: torch.Tensor, mask_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Level-1 features of a few images for Fig. 9: the student's input f_T^1 and the restored f_G^1, (k, C, h, w).

    Computed as predict computes them: the same masks, and the same execution (under FAST
    its autocast and memory format, so that a compiled model runs the evaluation's graphs
    instead of compiling new ones). Both are unit-normalised over the channels: the cosine
    loss leaves the norm of the restored features free, and the anomaly map sees only their
    directions.
    """
    model = trainer.model.eval()
    images = trainer.execution.to_device(images, trainer.device)
    with trainer.execution.autocast(trainer.device):
        target, _ = model.encode(images)
        restored = model.restore(model.decode(model.project(target)), HashedDraws(images, mask_seed))
    return tuple(F.normalize(f[0].float(), dim=1).cpu().numpy() for f in (target, restored))
