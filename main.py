"""MRKD: masked reverse knowledge distillation for image anomaly detection.

Jiang, Cao, Shen, Knowledge-Based Systems 280 (2023) 110982. Trains one model per
category, evaluates it after the last epoch and prints the paper's metrics.

    python main.py                          # the paper's MVTec AD run, all 15 categories
    python main.py --demo                   # the whole pipeline on generated demo data, CPU minutes
    python main.py --categories=bottle,cable --epochs=50 --run_name=try1
    python main.py --run_name=try1 --categories=bottle --predict=new_images/   # score new images
    python main.py --help                   # the constants below, with their sources

Every UPPER_CASE constant below can be overridden as --name=value (lower case;
lists comma-separated; none for no value).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

# ---- constants (each names its source) -------------------------------------------------
# Data
DATA_DIR = "data/mvtec_anomaly_detection"  # where the dataset is unpacked
DATASET = "mvtec"               # Sec. 4.1: "mvtec" (Tables 1-2), "mtd" (Table 3), "btad" (Table 4); or "visa" (VisA)
CATEGORIES = ()                 # categories to run; empty: every category of DATASET
IMAGE_SIZE = 256                # Sec. 4.1: images resized to 256x256
# Method
METHOD = "mrkd"                 # preset of the constants below: "mrkd" (this paper) or "drd" (METHODS below)
LOSS = "mrkd"                   # training objective: "mrkd" (Eq. (4)) or "drd" (DRD's three losses)
BACKBONE = "wide_resnet50_2"    # Sec. 3.2; Table 8 also uses resnet18 and resnet50
WEIGHTS = "imagenet"            # teacher weights: "imagenet" (IMAGENET1K_V1, as the authors), none, or a .pth path
ILM = True                      # Table 5: image-level masking (NSA images as the student's input)
FLM = True                      # Table 5: feature-level masking and the generation modules G
FLM_RATIO = 0.2                 # lambda of Eq. (2), Sec. 4.1; Fig. 11 sweeps 0-0.8
ALPHA = 1.0                     # Table 6: proportion of training images given NSA anomalies; authors' implementation
SYNTHESIS = "nsa"               # ILM's anomalies: "nsa" (Sec. 3.2) or "drd" (DRD's pasted patches)
NSA_MODE = "swap"               # authors' implementation; "poisson" or "mixed": NSA's own seamless blending
BOTTLENECK = "ocbe"             # "ocbe": RD4AD's one-class bottleneck (Sec. 4.1); "mfcf": DRD's cascade fusion
SCORE_LEVELS = (1, 2, 3)        # Eq. (5): levels summed into the map; Table 7 (SM^1 ... SM^1&2&3)
# Training
EPOCHS = 200                    # Sec. 4.1
BATCH_SIZE = 16                 # Sec. 4.1
LEARNING_RATE = 0.005           # Sec. 4.1
BETAS = (0.5, 0.999)            # Adam betas, authors' implementation
WEIGHT_DECAY = 0.0              # Adam weight decay: none in the authors' implementation (DRD: 1e-5)
SEED = 111                      # authors' implementation; here re-applied at the start of every category
# Evaluation
SIGMA = 4.0                     # Gaussian smoothing of the map, authors' implementation (Sec. 3.4 is silent)
EVAL_MASKS = 1                  # K, FLM masks averaged at test time; Sec. 3.4 uses one
IMAGE_SCORE = "max"             # Eq. (6); "refined": DRD's (1 + v) x max, v from the calmest level
EVAL_EVERY = 0                  # diagnostic only: also evaluate every N epochs (0: never); never picks the result
# Running
DEVICE = "auto"                 # "auto" (first CUDA GPU, else CPU), "cpu", "cuda", "cuda:1"
WORKERS = 4                     # DataLoader workers doing the NSA synthesis
FAST = False                    # opt-in fast path: bf16/fp16 autocast, channels_last, cuDNN autotuner; default fp32
COMPILE = False                 # opt-in torch.compile of the networks (first epoch slower; pays off on long runs)
CHECKPOINT_EVERY = 10           # save a resumable checkpoint every N epochs (and after the last)
RUN_NAME = "mrkd"               # results/<run>/ and checkpoints/<run>/
RESULTS_DIR = "results"         # where runs write metrics, predictions and figures
CHECKPOINT_DIR = "checkpoints"  # where runs write their checkpoints
RESUME = False                  # continue an interrupted run from its last checkpoint
EVAL_ONLY = False               # evaluate the run's saved checkpoints, no training
OVERWRITE = False               # allow a new run to replace an existing run's results and checkpoints
FIGURES = True                  # draw Fig. 6, 7, 9 and ROC curves per category into results/<run>/figures/
DEMO = False                    # run on generated demo data with DEMO_CONFIG below
EXPERIMENT = ""                 # a preset of utils/presets.py: table3 ... table8, fig11, family (every row at once)
PREDICT = ""                    # score the images under this path with the run's trained checkpoints (no training)
# ----------------------------------------------------------------------------------------
CONSTANTS = {name: value for name, value in dict(globals()).items() if name.isupper()}

# What --demo changes (other overrides still apply on top): small images, a few epochs and
# random teacher weights, so the whole pipeline runs in minutes on a 2-core CPU, offline.
DEMO_CONFIG = dict(
    DATA_DIR="results/demo_data", DATASET="mvtec", CATEGORIES=("demo_texture", "demo_object"),
    IMAGE_SIZE=64, BACKBONE="resnet18", WEIGHTS=None, EPOCHS=20, BATCH_SIZE=8, WORKERS=0, RUN_NAME="demo",
)

# What each METHOD sets, before the command line's overrides. RD4AD needs no entry: it is
# MRKD with ILM and FLM off.
METHODS = {
    "mrkd": {},
    # DRD (Ge et al., Neurocomputing 2025), from its public implementation: its loss, cascade
    # fusion bottleneck, pseudo-anomalies and refined score, no FLM; Adam with weight decay
    # 1e-5 and batch 4 (learning rate, betas and epochs as MRKD's).
    "drd": dict(LOSS="drd", BOTTLENECK="mfcf", SYNTHESIS="drd", IMAGE_SCORE="refined", FLM=False, ILM=True,
                WEIGHT_DECAY=1e-5, BATCH_SIZE=4),
}

# What --predict takes from the command line: which run, what to score and how on this machine.
# Every other constant comes from the run's config.json, so that new images are scored exactly
# as its test set was. BATCH_SIZE here is the scoring batch only: a score does not depend on it.
PREDICT_OVERRIDES = ("PREDICT", "RUN_NAME", "RESULTS_DIR", "CHECKPOINT_DIR", "CATEGORIES", "DEVICE", "WORKERS",
                     "COMPILE", "BATCH_SIZE")
# ----------------------------------------------------------------------------------------

# cuBLAS repeats its results only with a fixed workspace; set before torch starts CUDA.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402  (after the constants, so they stay at the top of the file)
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataset import CATEGORIES as DATASET_CATEGORIES  # noqa: E402
from dataset import (CategoryFiles, EpochSampler, ImageFiles, TestImages, TrainImages, category_files,  # noqa: E402
                     images_under, seed_worker)
from dataset.check import check_files  # noqa: E402
from dataset.demo import make_demo_dataset  # noqa: E402
from dataset.folders import listed_error  # noqa: E402
from dataset.images import SYNTHESES  # noqa: E402
from dataset.nsa import MODES as NSA_MODES  # noqa: E402
from model import BOTTLENECKS, MRKD, OBJECTIVES, build_model  # noqa: E402
from model.generator import MaskDraws  # noqa: E402
from model.engine import (CapturedStep, Diverged, Execution, Scoring, execution_for, level1_features, load_weights,  # noqa: E402
                          pick_device, predict, read_checkpoint, save_checkpoint, seed_everything, train_epoch)
from model.teacher import check_backbone  # noqa: E402
from utils import metrics  # noqa: E402
from utils.config import bundle, check, parse_overrides  # noqa: E402
from utils.errors import InputError  # noqa: E402
from utils.figures import (draw_category, figure_features, figure_lambda_sweep, figure_overlay,  # noqa: E402
                           load_predictions, pca_project, save_predictions)
from utils.paper import PAPER  # noqa: E402
from utils.presets import PRESETS, Preset, slug  # noqa: E402
from utils.ranks import Ranks  # noqa: E402
from utils.report import category_line, with_mean, write_atomically, write_csv, write_tables  # noqa: E402


@dataclass(frozen=True)
class Training:
    """What shapes the trained weights: the constants of these (upper-case) names.

    Experiment rows with equal Training share one training, and a resumed run must
    match its checkpoint's Training (but for EPOCHS).
    """

    dataset: str
    image_size: int
    loss: str
    backbone: str
    weights: str | None
    ilm: bool
    flm: bool
    flm_ratio: float
    alpha: float
    synthesis: str
    nsa_mode: str
    bottleneck: str
    epochs: int
    batch_size: int
    learning_rate: float
    betas: tuple[float, ...]
    weight_decay: float
    seed: int
    fast: bool

    def __post_init__(self) -> None:
        check([
            (self.dataset in DATASET_CATEGORIES, f"DATASET must be one of {', '.join(DATASET_CATEGORIES)}"),
            (self.image_size >= 32 and self.image_size % 32 == 0, "IMAGE_SIZE must be a multiple of 32"),
            (self.loss in OBJECTIVES, f"LOSS must be one of {', '.join(OBJECTIVES)}"),
            (self.loss != "drd" or self.ilm, "LOSS=drd trains on pseudo-abnormal images: it needs ILM=True"),
            (0 <= self.flm_ratio < 1, "FLM_RATIO (lambda) must lie in [0, 1)"),
            (0 <= self.alpha <= 1, "ALPHA must lie in [0, 1]"),
            (self.synthesis in SYNTHESES, f"SYNTHESIS must be one of {', '.join(SYNTHESES)}"),
            (self.nsa_mode in NSA_MODES, f"NSA_MODE must be one of {', '.join(NSA_MODES)}"),
            (self.bottleneck in BOTTLENECKS, f"BOTTLENECK must be one of {', '.join(BOTTLENECKS)}"),
            (self.epochs >= 1 and self.batch_size >= 1, "EPOCHS and BATCH_SIZE must be at least 1"),
            (self.learning_rate > 0 and self.weight_decay >= 0,
             "LEARNING_RATE must be positive and WEIGHT_DECAY at least 0"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "BETAS must be two numbers in [0, 1)"),
        ])
        check_backbone(self.backbone)


@dataclass(frozen=True)
class Run:
    """Where and how a run executes and what it writes: the constants of these names."""

    run_name: str
    method: str
    experiment: str
    demo: bool
    data_dir: str
    categories: tuple[str, ...]
    results_dir: str
    checkpoint_dir: str
    device: str
    workers: int
    compile: bool
    checkpoint_every: int
    eval_every: int
    resume: bool
    eval_only: bool
    overwrite: bool
    figures: bool
    predict: str

    def __post_init__(self) -> None:
        check([
            (self.experiment in ("", *PRESETS), f"EXPERIMENT must be one of {', '.join(PRESETS)}"),
            (self.workers >= 0 and self.checkpoint_every >= 1 and self.eval_every >= 0,
             "WORKERS and EVAL_EVERY must be at least 0, CHECKPOINT_EVERY at least 1"),
            (re.fullmatch(r"[\w.-]+", self.run_name or "") is not None,
             "RUN_NAME must be letters, digits, '_', '-' or '.'"),
        ])


@dataclass(frozen=True)
class Settings:
    """The resolved constants (`constants`, as written to config.json and checkpoints) and their bundles."""

    constants: dict[str, Any]
    training: Training
    scoring: Scoring
    run: Run


def resolve(overrides: dict[str, Any], row: dict[str, Any] | None = None) -> Settings:
    """The constants, then DEMO_CONFIG (with --demo), the METHOD's, the command line's
    overrides, and last an experiment row's constants (so a row is what its table says)."""
    row = row or {}
    method = {**CONSTANTS, **overrides, **row}["METHOD"]
    check([(method in METHODS, f"METHOD must be one of {', '.join(METHODS)}")])
    demo = DEMO_CONFIG if {**CONSTANTS, **overrides}["DEMO"] else {}
    constants = {**CONSTANTS, **demo, **METHODS[method], **overrides, **row}
    if constants["EXPERIMENT"] and "RUN_NAME" not in overrides:
        constants["RUN_NAME"] = constants["EXPERIMENT"]  # results/<preset>/ unless named
    return settings_of(constants)


def settings_of(constants: dict[str, Any]) -> Settings:
    """The bundles of a full set of constants (each checks its ranges)."""
    return Settings(constants, bundle(Training, constants), bundle(Scoring, constants), bundle(Run, constants))


def claim_folders(run: Run, constants: dict[str, Any], results: Path, checkpoints: Path) -> None:
    """Create a run's folders, refusing to replace another run's results by accident.

    A run exists once it has written metrics or checkpoints; --overwrite=True deletes it
    first, and a demo run may replace an earlier demo run of the same name.
    """
    written = [*results.glob("*.csv"), *checkpoints.glob("**/*.pt")]
    if written and not (run.resume or run.eval_only):
        earlier = results / "config.json"
        earlier_demo = earlier.exists() and json.loads(earlier.read_text()).get("DEMO") is True
        if not (run.overwrite or (run.demo and earlier_demo)):
            raise InputError(f"A run named {run.run_name!r} exists in {results}; choose another --run_name, "
                             f"or --resume=True, --eval_only=True or --overwrite=True.")
        for folder in (results, checkpoints):
            try:
                shutil.rmtree(folder)
            except FileNotFoundError:
                pass
            except OSError as error:
                raise InputError(f"Cannot remove {error.filename} to overwrite the run ({error.strerror}); "
                                 f"make it writable or choose another --run_name.") from None
    (results / "predictions").mkdir(parents=True, exist_ok=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    # An evaluation keeps the configuration its checkpoints were trained with.
    if not (run.eval_only and (results / "config.json").exists()):
        write_atomically(results / "config.json", json.dumps(constants, indent=2) + "\n")


def load_trained(model: MRKD, path: Path, training: Training, ignore: tuple[str, ...], what: str,
                 device: torch.device) -> dict[str, Any]:
    """Load a checkpoint's weights into the model, refusing settings it was not trained with
    (but those in `ignore`); returns the checkpoint."""
    state = read_checkpoint(path, device)
    before = state.get("config", {})
    differences = [f"{name.upper()} {before.get(name.upper(), 'unset')!r} -> {value!r}"
                   for name, value in asdict(training).items()
                   if name not in ignore and before.get(name.upper(), "unset") != value]
    if differences:
        raise InputError(f"Cannot {what} {path}: it was trained with other settings ({'; '.join(differences)}); "
                         f"use the settings it was trained with, or another --run_name.")
    load_weights(model, state, path)
    return state


def build(training: Training, device: torch.device, compile: bool) -> tuple[MRKD, Execution]:
    """The model of the Training settings on the device, and how it runs (faithful or fast)."""
    model = build_model(training.backbone, training.weights, training.flm_ratio, training.flm,
                        training.bottleneck).to(device)
    execution = execution_for(device, training.fast)
    if execution.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        for part in (model.teacher, model.bottleneck, model.student, *model.generators):
            part.compile()  # each part, since training and evaluation call them separately
    return model, execution


def train_category(model: MRKD, category: str, train_files: list[Path], training: Training, run: Run,
                   device: torch.device, execution: Execution, checkpoint: Path,
                   diagnostic: Callable[[], dict[str, float]]) -> None:
    """Adam over theta_B, theta_S, theta_G for EPOCHS epochs (Algorithm 1), resumable.

    The optimiser state is kept in the checkpoint only while the category trains: after
    the last epoch the checkpoint holds the weights alone.
    """
    train_set = TrainImages(train_files, category, training.image_size, alpha=training.alpha,
                            nsa_mode=training.nsa_mode, seed=training.seed, augment=training.ilm,
                            synthesis=training.synthesis)
    optimizer = execution.optimizer(model.trainable_parameters(), training.learning_rate, training.betas,
                                    training.weight_decay)
    start = 0
    if run.resume and checkpoint.exists():
        state = load_trained(model, checkpoint, training, ("epochs",), "resume from", device)
        start = state["epoch"]
        if start < training.epochs:
            if "optimizer" not in state:
                raise InputError(f"{checkpoint} holds a finished training ({start} epochs) without its optimiser "
                                 f"state; train a new run to go on to {training.epochs} epochs.")
            optimizer.load_state_dict(state["optimizer"])
        tqdm.write(f"{category}: resuming after epoch {start}")
    if start >= training.epochs:
        return
    loader = DataLoader(train_set, batch_size=training.batch_size,
                        sampler=EpochSampler(len(train_set), training.seed, start), num_workers=run.workers,
                        persistent_workers=run.workers > 0, pin_memory=device.type == "cuda",
                        worker_init_fn=seed_worker)
    objective = OBJECTIVES[training.loss]
    captured = CapturedStep(model, optimizer, objective, execution) if execution.capture else None
    bar = tqdm(total=(training.epochs - start) * len(loader), desc=f"{category} training", unit="step",
               dynamic_ncols=True)
    for epoch in range(start, training.epochs):
        started = time.perf_counter()
        # Each epoch's random draws (FLM masks, DRD's feature noise) come from their own seed,
        # so a resumed run repeats them.
        epoch_seed = int(np.random.SeedSequence([training.seed, epoch]).generate_state(1)[0])
        torch.manual_seed(epoch_seed)
        draws = MaskDraws(torch.Generator().manual_seed(epoch_seed))
        try:
            loss = train_epoch(model, loader, optimizer, device, objective, draws, execution,
                               on_step=lambda value: (bar.update(), bar.set_postfix(loss=f"{value:.4f}")),
                               captured=captured)
        except Diverged as error:
            bar.close()
            kept = f"the last good checkpoint is {checkpoint}" if checkpoint.exists() else "no checkpoint was saved yet"
            raise Diverged(f"{category}: training stopped in epoch {epoch + 1}: {error}; {kept}.") from None
        tqdm.write(f"{category} epoch {epoch + 1}/{training.epochs} loss {loss:.4f} "
                   f"({time.perf_counter() - started:.1f} s)")
        last = epoch + 1 == training.epochs
        if (epoch + 1) % run.checkpoint_every == 0 or last:
            save_checkpoint(checkpoint, model, None if last else optimizer, epoch + 1,
                            {name.upper(): value for name, value in asdict(training).items()})
        if run.eval_every and (epoch + 1) % run.eval_every == 0 and not last:
            tqdm.write(f"  diagnostic only, never used to pick a result: {category_line(category, diagnostic())}")
    bar.close()


def evaluate_category(model: MRKD, test_set: TestImages, scoring: Scoring, batch_size: int,
                      device: torch.device, execution: Execution) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The four metrics (fractions), the image scores (N,) and the smoothed maps (N, S, S)."""
    # The test images are preloaded: worker processes would only add their start-up time.
    loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda")
    scores, maps = predict(model, loader, device, scoring, execution)
    return metrics.evaluate(test_set.labels, scores, test_set.masks, maps), scores, maps


def run_category(settings: Settings, category: str, files: CategoryFiles, device: torch.device, results: Path,
                 checkpoints: Path) -> dict[str, Any]:
    """Build, train (or load), evaluate after the last epoch, save predictions; returns the table row."""
    training, run = settings.training, settings.run
    for present, kind in ((files.has_anomalies, "anomalous"), (files.has_normals, "normal")):
        if not present:  # AU-ROC needs both kinds: report the category instead of crashing on it
            tqdm.write(f"{category}: skipped, its test set holds no {kind} image to evaluate on.")
            return {"category": category, "status": f"no {kind} test image"}
    seed_everything(training.seed)  # a fresh seed per category: results do not depend on the loop order
    model, execution = build(training, device, run.compile)
    checkpoint = checkpoints / f"{category}.pt"
    test_set = TestImages(files.test, training.image_size)

    def evaluate() -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        return evaluate_category(model, test_set, settings.scoring, training.batch_size, device, execution)

    if run.eval_only:
        load_trained(model, checkpoint, training, ("epochs", "fast"), "evaluate", device)
    else:
        try:
            train_category(model, category, files.train, training, run, device, execution, checkpoint,
                           diagnostic=lambda: evaluate()[0])
        except Diverged as error:
            tqdm.write(str(error))
            return {"category": category, "status": "diverged"}
    started = time.perf_counter()
    values, scores, maps = evaluate()
    tqdm.write(f"{category} evaluated in {time.perf_counter() - started:.1f} s")
    # The decision threshold for new images (--predict), chosen on the test set: the best F1 it allows.
    threshold = metrics.f1_threshold(test_set.labels, scores)
    anomalous = np.flatnonzero(test_set.labels == 1)
    examples = anomalous[np.linspace(0, len(anomalous) - 1, min(4, len(anomalous))).round().astype(int)]
    images = torch.stack([test_set[i][0] for i in examples])
    features = pca_project(*level1_features(model, images, device, settings.scoring.seed))
    save_predictions(results / "predictions" / f"{category}.npz", category, scores, test_set.labels,
                     [sample.defect for sample in test_set.samples], values, threshold, test_set.masks, maps,
                     test_set.images, examples, *features)
    return {"category": category, **values, "threshold": threshold, "status": "ok"}


def run_categories(settings: Settings, results: Path, checkpoints: Path, check_data: bool = True
                   ) -> list[dict[str, Any]]:
    """Every category in turn (under torchrun: this rank's share), the table rewritten after each,
    so nothing is lost on a crash; returns every category's row, in order, on every rank.

    check_data: decode every file first (False: an earlier row of the experiment did).
    """
    run = settings.run
    ranks = Ranks.from_launcher()
    categories = run.categories or DATASET_CATEGORIES[settings.training.dataset]
    mine = ranks.share(categories)
    # Every file of every category is found and decoded before any work.
    files = {category: category_files(settings.training.dataset, run.data_dir, category) for category in categories}
    if check_data:
        ranks.agree(lambda: check_files({category: files[category] for category in mine}))
    device = pick_device(run.device, ranks.local_rank)
    ranks.agree(lambda: claim_folders(run, settings.constants, results, checkpoints), only_rank=0)
    paper = paper_rows(run.method, settings.training, categories)
    print(f"Run {run.run_name!r} ({run.method}) on {device}: {len(mine)} of {len(categories)} categories"
          f"{f' (rank {ranks.rank} of {ranks.world})' if ranks.world > 1 else ''}; results and figures in "
          f"{results}, checkpoints in {checkpoints}")
    rows = []
    for category in mine:
        rows.append(run_category(settings, category, files[category], device, results, checkpoints))
        tqdm.write(category_line(category, rows[-1]))
        if ranks.rank == 0:
            write_tables(results, "metrics", rows, paper)
        if run.figures and rows[-1]["status"] == "ok":
            draw_category(results / "predictions" / f"{category}.npz", results / "figures")
    if ranks.world > 1:  # the categories of every rank, in the order of the list
        done = {row["category"]: row for share in ranks.gather(rows) for row in share}
        rows = [done[category] for category in categories]
    if ranks.rank == 0:
        print("\n" + write_tables(results, "metrics", rows, paper))
    return rows


def run_experiment(name: str, rows: list[Settings], results: Path, checkpoints: Path) -> list[dict[str, Any]]:
    """Each row of a preset (its settings in `rows`) as a run of its own in results/<row>/, then
    the preset's table.

    Rows with equal Training evaluate the checkpoints of the first row trained like them
    instead of training again (Table 7).
    """
    preset = PRESETS[name]
    trained: dict[Training, Path] = {}  # -> the folder holding its checkpoints
    checked: set[tuple[str, str]] = set()  # (dataset, data_dir) whose files were decoded
    table_rows = []
    for row, settings in zip(preset.rows, rows):
        label = row.label
        if settings.training in trained:
            settings = replace(settings, run=replace(settings.run, eval_only=True, resume=False))
        folder = trained.setdefault(settings.training, checkpoints / slug(label))
        data = (settings.training.dataset, settings.run.data_dir)
        print(f"\n{preset.title}: {label}")
        categories = run_categories(settings, results / slug(label), folder, check_data=data not in checked)
        checked.add(data)
        failed = any(category["status"] == "diverged" for category in categories)
        table_rows.append({**with_mean(categories)[-1], "category": label, "status": "diverged" if failed else "ok"})
    # A row's paper numbers are for the dataset it names (MVTec AD unless it sets DATASET): on another
    # dataset (--dataset=visa) its paper columns stay empty.
    paper = {row.label: row.paper for row, settings in zip(preset.rows, rows)
             if settings.training.dataset == row.constants.get("DATASET", "mvtec")}
    if not any(value is not None for numbers in paper.values() for value in numbers):
        paper = None
    note = f"{preset.title}. Ours: the mean over the categories run, each evaluated once after the last epoch"
    note += ("; paper: the mean it reports on that dataset, AU-PRO as the authors compute it (compare with "
             "aupro_per_image)." if paper else "; no paper number to compare with on this dataset.")
    if Ranks.from_launcher().rank == 0:
        print("\n" + write_tables(results, name, table_rows, paper, note, mean=False))
        draw_experiment(preset, table_rows, results)
    return table_rows


def draw_experiment(preset: Preset, rows: list[dict[str, Any]], results: Path) -> None:
    """Fig. 9 across two rows (features restored without and with FLM) and Fig. 11 (a lambda sweep)."""
    if preset.features is not None:
        with_flm, without_flm = (results / slug(label) / "predictions" for label in preset.features)
        for path in sorted(with_flm.glob("*.npz")):
            if (without_flm / path.name).exists():
                figure_features(load_predictions(path), load_predictions(without_flm / path.name),
                                results / "figures" / f"{path.stem}_features_flm.png")
    if preset.sweep is not None:
        figure_lambda_sweep([row.constants[preset.sweep] for row in preset.rows], rows,
                            results / "figures" / f"{preset.sweep.lower()}_sweep.png")


def paper_rows(method: str, training: Training, categories: tuple[str, ...]) -> dict[str, tuple] | None:
    """The reported numbers of the method run (RD4AD when ILM and FLM are off) for the categories
    run; the paper's mean only when every category of the dataset was run."""
    method = method if training.ilm or training.flm else "rd4ad"
    paper = PAPER.get((method, training.dataset), {})
    rows = {name: paper[name] for name in categories if name in paper}
    if "mean" in paper and set(DATASET_CATEGORIES[training.dataset]) <= set(categories):
        rows["mean"] = paper["mean"]
    return rows or None


def rebuild(overrides: dict[str, Any]) -> Settings:
    """The settings of a trained run, for --predict: its config.json, then the command line's
    PREDICT_OVERRIDES (any other constant on the command line is refused)."""
    refused = [f"--{name.lower()}" for name in overrides if name not in PREDICT_OVERRIDES]
    if refused:
        raise InputError(f"--predict scores with the settings the run was trained and evaluated with; leave out "
                         f"{', '.join(refused)}.")
    where = {**CONSTANTS, **overrides}
    path = Path(where["RESULTS_DIR"]) / where["RUN_NAME"] / "config.json"
    if not path.is_file():
        raise InputError(f"No trained run {where['RUN_NAME']!r}: {path} does not exist; train it first, or give "
                         f"the --run_name and --results_dir it was trained with.")
    try:
        saved = json.loads(path.read_text())
        needed = [field.name.upper() for part in (Training, Scoring) for field in fields(part)]
        missing = [name for name in needed if name not in saved]
        if missing:
            raise InputError(f"it lacks {', '.join(missing)}")
        # JSON has lists where the constants have tuples; the categories to score are the command line's.
        typed = {name: tuple(value) if isinstance(CONSTANTS[name], tuple) and isinstance(value, list) else value
                 for name, value in saved.items() if name in CONSTANTS}
        constants = {**CONSTANTS, **typed, "CATEGORIES": (), **overrides}
        return settings_of(constants)
    except (ValueError, TypeError, AttributeError, InputError) as error:
        raise InputError(f"Cannot rebuild the configuration of run {where['RUN_NAME']!r} from {path} "
                         f"({str(error).rstrip('.')}); train the run again with this version.") from None


def prediction_plan(settings: Settings, results: Path, checkpoints: Path) -> dict[str, dict[str, Any]]:
    """Each category to score (CATEGORIES, or the run's only trained one) -> its test-set predictions,
    after checking that it has a finished checkpoint and a decision threshold."""
    run = settings.run
    trained = sorted(path.stem for path in checkpoints.glob("*.pt"))
    if not trained:
        raise InputError(f"Run {run.run_name!r} has no checkpoint in {checkpoints}; train it first, or give the "
                         f"--checkpoint_dir it was trained with.")
    if not run.categories and len(trained) > 1:
        raise InputError(f"Run {run.run_name!r} has checkpoints of {len(trained)} categories "
                         f"({', '.join(trained)}); choose the model with --categories=...")
    plan = {}
    for category in run.categories or trained:
        checkpoint = checkpoints / f"{category}.pt"
        evaluated = results / "predictions" / f"{category}.npz"
        if not checkpoint.is_file():
            raise InputError(f"Run {run.run_name!r} has no checkpoint of category {category!r} ({checkpoint} does "
                             f"not exist); its trained categories are {', '.join(trained)}.")
        if not evaluated.is_file():
            raise InputError(f"Category {category!r} of run {run.run_name!r} was never evaluated ({evaluated} does "
                             f"not exist); evaluate it with --run_name={run.run_name} --eval_only=True first.")
        plan[category] = load_predictions(evaluated)
        if "threshold" not in plan[category]:
            raise InputError(f"{evaluated} holds no decision threshold (an older version evaluated it); evaluate "
                             f"again with --run_name={run.run_name} --eval_only=True.")
    return plan


def predict_category(settings: Settings, category: str, reference: dict[str, Any], files: list[Path], root: Path,
                     device: torch.device, results: Path, checkpoints: Path) -> list[str]:
    """Score `files` with the category's checkpoint: results/<run>/predict/<category>.csv, a row per
    image, and <category>/<image name>.png, an overlay per image (folders below `root` kept).

    Returns the sentences naming the files that could not be read; every other file is scored.
    """
    training, scoring, run = settings.training, settings.scoring, settings.run
    # As run_category builds it: a teacher with random weights (WEIGHTS=none) comes from the seed.
    seed_everything(training.seed)
    model, execution = build(training, device, run.compile)
    state = load_trained(model, checkpoints / f"{category}.pt", training, ("epochs", "fast", "batch_size"),
                         "score with", device)
    if "optimizer" in state:
        raise InputError(f"{checkpoints / category}.pt holds an unfinished training (epoch {state['epoch']}); "
                         f"finish it with --run_name={run.run_name} --resume=True first.")
    threshold = reference["threshold"]
    low, high = float(reference["scores"].min()), float(reference["scores"].max())
    scale = (float(reference["example_maps"].min()), float(reference["example_maps"].max()))  # as Fig. 7's
    folder = results / "predict" / category
    shutil.rmtree(folder, ignore_errors=True)  # an earlier call's overlays would not match the new CSV
    loader = DataLoader(ImageFiles(files, training.image_size), batch_size=training.batch_size,
                        num_workers=run.workers, pin_memory=device.type == "cuda")
    rows, unreadable = [], []
    bar = tqdm(total=len(files), desc=f"{category} scoring", unit="image", dynamic_ncols=True, leave=False)
    for indices, images, pixels, problems in loader:
        readable = [k for k, problem in enumerate(problems) if not problem]
        unreadable += [problem for problem in problems if problem]
        if readable:
            scores, maps = predict(model, [(images[readable],)], device, scoring, execution)
            normalized = metrics.normalized_scores(scores, threshold, low, high)
            for k, score, normal_score, anomaly_map in zip(readable, scores, normalized, maps):
                path = files[int(indices[k])]
                anomalous = bool(score >= threshold)
                rows.append({"path": str(path), "score": float(score), "normalized_score": float(normal_score),
                             "anomalous": anomalous})
                title = (f"{path.name}: score {score:.4g} (normalized {normal_score:.2f}), "
                         f"{'anomalous' if anomalous else 'normal'}")
                overlay = folder / path.relative_to(root).parent / f"{path.name}.png"
                figure_overlay(pixels[k].numpy(), anomaly_map, scale, title, overlay)
        bar.update(len(problems))
    bar.close()
    table = results / "predict" / f"{category}.csv"
    write_csv(table, ["path", "score", "normalized_score", "anomalous"], rows)
    flagged = sum(row["anomalous"] for row in rows)
    tqdm.write(f"{category}: {len(rows)} images scored, {flagged} anomalous (score >= {threshold:.4g}); "
               f"{table}, overlays in {folder}")
    return unreadable


def predict_run(settings: Settings) -> list[dict[str, Any]]:
    """--predict: score every image under PREDICT with the run's trained categories, as its test set was scored.

    Unreadable images are skipped, and listed in one InputError once every readable one is scored.
    """
    run = settings.run
    results = Path(run.results_dir) / run.run_name
    checkpoints = Path(run.checkpoint_dir) / run.run_name
    plan = prediction_plan(settings, results, checkpoints)
    files = images_under(run.predict)
    root = Path(run.predict).expanduser()
    root = root if root.is_dir() else root.parent
    device = pick_device(run.device)
    print(f"Scoring {len(files)} images under {run.predict} with run {run.run_name!r} on {device}")
    unreadable = {}  # the same files fail for every category: each listed once
    for category, reference in plan.items():
        unreadable.update(dict.fromkeys(predict_category(settings, category, reference, files, root, device,
                                                         results, checkpoints)))
    if unreadable:
        raise listed_error(f"{len(unreadable)} images could not be read, the others were scored; replace or remove "
                           f"these files:", list(unreadable))
    return [{"category": category, "status": "ok"} for category in plan]


def usage() -> str:
    """The module docstring and the constants block of this file (with --demo's and each
    METHOD's settings, and what --predict takes from the command line), as the help text."""
    source = Path(__file__).read_text()
    block = source[source.index("# ---- constants"):source.index("import numpy")]
    return __doc__ + "\n" + block.rstrip() + "\n"


def run(overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """The main job: every category, or with EXPERIMENT every row of a preset; with PREDICT,
    new images scored by a trained run."""
    if overrides.get("PREDICT"):
        return predict_run(rebuild(overrides))
    settings = resolve(overrides)
    run = settings.run
    if run.demo:
        make_demo_dataset(Path(run.data_dir))
    results = Path(run.results_dir) / run.run_name
    checkpoints = Path(run.checkpoint_dir) / run.run_name
    if not run.experiment:
        return run_categories(settings, results, checkpoints)
    rows = [resolve(overrides, {**row.constants, "EXPERIMENT": "", "RUN_NAME": slug(row.label)})
            for row in PRESETS[run.experiment].rows]
    return run_experiment(run.experiment, rows, results, checkpoints)


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(usage())
        return 0
    try:
        rows = run(parse_overrides(CONSTANTS, argv))
    except InputError as error:
        if Ranks.from_launcher().rank == 0:  # under torchrun every rank knows the error; one says it
            print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a folder that cannot be written: read-only, full, a file in its place
        print(f"error: cannot write {error.filename or 'a file'} ({error.strerror or error}); "
              f"check --results_dir and --checkpoint_dir.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; rerun with --resume=True to continue from the last checkpoint", file=sys.stderr)
        return 130
    return 1 if any(row["status"] == "diverged" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
