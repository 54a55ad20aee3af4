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

import sys
import time
from pathlib import Path
from typing import Any

# ---- constants (each names its source) -------------------------------------------------
# Data
DATA_DIR = "data/mvtec_anomaly_detection"  # where the dataset is unpacked
DATASET = "mvtec"               # Sec. 4.1: "mvtec" (Tables 1-2), "mtd" (Table 3), "btad" (Table 4); "visa", "mvtec_ad_2"
CATEGORIES = ()                 # categories to run; empty: every category of DATASET
IMAGE_SIZE = 256                # Sec. 4.1: images resized to 256x256
# Method
METHOD = "mrkd"                 # preset of the constants below: "mrkd" (this paper), "drd" or "rdpp" (METHODS below)
LOSS = "mrkd"                   # training objective: "mrkd" (Eq. (4)), "drd" (DRD's three losses) or "rdpp" (RD++'s)
BACKBONE = "wide_resnet50_2"    # Sec. 3.2; Table 8 also uses resnet18 and resnet50
WEIGHTS = "imagenet"            # teacher weights: "imagenet" (IMAGENET1K_V1, as the authors), none, or a .pth path
ILM = True                      # Table 5: image-level masking (NSA images as the student's input)
FLM = True                      # Table 5: feature-level masking and the generation modules G
FLM_RATIO = 0.2                 # lambda of Eq. (2), Sec. 4.1; Fig. 11 sweeps 0-0.8
ALPHA = 1.0                     # Table 6: proportion of training images given NSA anomalies; authors' implementation
SYNTHESIS = "nsa"               # ILM's anomalies: "nsa" (Sec. 3.2), "drd" (DRD's pasted patches), "rdpp" (simplex noise)
NSA_MODE = "swap"               # authors' implementation; "poisson" or "mixed": NSA's own seamless blending
BOTTLENECK = "ocbe"             # "ocbe": RD4AD's one-class bottleneck (Sec. 4.1); "mfcf": DRD's cascade fusion
PROJECTION = False              # RD++'s multi-projection layer between teacher and bottleneck
SCORE_LEVELS = (1, 2, 3)        # Eq. (5): levels summed into the map; Table 7 (SM^1 ... SM^1&2&3)
# Training
EPOCHS = 200                    # Sec. 4.1
BATCH_SIZE = 16                 # Sec. 4.1
LEARNING_RATE = 0.005           # Sec. 4.1
PROJECTION_LEARNING_RATE = 0.001  # RD++'s projection, its authors' implementation
ACCUMULATE = 1                  # Adam steps every N batches on their summed gradients (RD++'s authors: 2)
BETAS = (0.5, 0.999)            # Adam betas, authors' implementation
WEIGHT_DECAY = 0.0              # Adam weight decay: none in the authors' implementation (DRD: 1e-5)
SEED = 111                      # authors' implementation; here re-applied at the start of every category
# Evaluation
SIGMA = 4.0                     # Gaussian smoothing of the map, authors' implementation (Sec. 3.4 is silent)
EVAL_MASKS = 1                  # K, FLM masks averaged at test time; Sec. 3.4 uses one
IMAGE_SCORE = "max"             # Eq. (6); "refined": DRD's (1 + v) x max, v from the calmest level
EVAL_EVERY = 0                  # also evaluate every N epochs (0: never): a diagnostic, unless SELECT picks among them
# The protocol, fair by default; the published protocols are opt-ins, marked in every table and CSV
SEEDS = ()                      # train and evaluate each category once per seed, tables as mean ± std; empty: SEED
SELECT = "last"                 # "last": the checkpoint after the last epoch; "best_on_test": RD++'s and DRD's releases
CATEGORY_EPOCHS = ""            # "rdpp": RD++'s release's epochs per category instead of EPOCHS
THRESHOLD = "f1_test"           # decision threshold for new images: "f1_test" (F1-best on the test set, so labelled),
                                # "normal" or "normal_mean_3std" (from normal images no training or test uses)
# Running
DEVICE = "auto"                 # "auto" (first CUDA GPU, else CPU), "cpu", "cuda", "cuda:1"
WORKERS = 4                     # DataLoader workers doing the NSA synthesis
FAST = False                    # opt-in fast path: bf16/fp16 autocast, channels_last, cuDNN autotuner; default fp32
COMPILE = False                 # opt-in torch.compile of the networks, once per process (its time printed per category)
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
EXPORT = False                  # write each trained category as results/<run>/export/<category>.onnx and .json
PARTIAL = False                 # let --eval_only and --predict use a checkpoint that has not finished its epochs
# ----------------------------------------------------------------------------------------
CONSTANTS = {name: value for name, value in dict(globals()).items() if name.isupper()}

# What --demo changes (other overrides still apply on top): small images, a few epochs and
# random teacher weights, so the whole pipeline runs in minutes on a 2-core CPU, offline. With
# --dataset=visa or mvtec_ad_2 the demo data are written in that dataset's layout.
DEMO_CONFIG = {"DATA_DIR": "results/demo_data", "DATASET": "mvtec", "CATEGORIES": ("demo_texture", "demo_object"),
               "IMAGE_SIZE": 64, "BACKBONE": "resnet18", "WEIGHTS": None, "EPOCHS": 20, "BATCH_SIZE": 8,
               "WORKERS": 0, "RUN_NAME": "demo"}

# What each METHOD sets, before the command line's overrides. RD4AD needs no entry: it is
# MRKD with ILM and FLM off.
METHODS = {
    "mrkd": {},
    # DRD (Ge et al., Neurocomputing 2025), from its public implementation: its loss, cascade
    # fusion bottleneck, pseudo-anomalies and refined score, no FLM; Adam with weight decay
    # 1e-5 and batch 4 (learning rate, betas and epochs as MRKD's).
    "drd": {"LOSS": "drd", "BOTTLENECK": "mfcf", "SYNTHESIS": "drd", "IMAGE_SCORE": "refined", "FLM": False,
            "ILM": True, "WEIGHT_DECAY": 1e-5, "BATCH_SIZE": 4},
    # RD++ (Tien et al., CVPR 2023), from its public implementation: RD4AD's bottleneck behind a
    # multi-projection layer trained by its own losses on simplex-noise images, no FLM; Adam steps
    # every 2 batches (batch size, learning rate, betas and epochs as MRKD's).
    "rdpp": {"LOSS": "rdpp", "PROJECTION": True, "SYNTHESIS": "rdpp", "FLM": False, "ILM": True, "ALPHA": 1.0,
             "ACCUMULATE": 2},
}

# What each DATASET sets, before the command line's overrides: MVTec AD 2 ships normal validation
# images, and its benchmark forbids choosing anything on the test set.
DATASETS = {"mvtec_ad_2": {"THRESHOLD": "normal"}}
# ----------------------------------------------------------------------------------------

import numpy as np  # noqa: E402  (after the constants, so they stay at the top of the file)
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from dataset import (DATASET_CATEGORIES, CategoryFiles, EpochSampler, TestImages, TrainImages,  # noqa: E402
                     category_files, seed_worker, with_validation)
from dataset.check import check_files  # noqa: E402
from dataset.demo import DEMO_DATASETS  # noqa: E402
from model.engine import (COMPILATION, Diverged, Trainer, build, load_weights, pick_device,  # noqa: E402
                          save_checkpoint, seed_everything, train_epoch)
from model.evaluation import decide, feature_examples, score_set  # noqa: E402
from model.experiments import paper_rows, run_experiment  # noqa: E402
from model.generator import MaskDraws  # noqa: E402
from model.methods import OBJECTIVES  # noqa: E402
from model.policy import category_settings, claim, resumable, usable  # noqa: E402
from model.predict import export_run, predict_run  # noqa: E402
from model.settings import BUNDLES, Settings, recorded, resolve  # noqa: E402
from utils import metrics  # noqa: E402
from utils.config import parse_overrides, usage  # noqa: E402
from utils.errors import InputError  # noqa: E402
from utils.figures import draw_category  # noqa: E402
from utils.predictions import Predictions  # noqa: E402
from utils.presets import PRESETS, slug  # noqa: E402
from utils.progress import progress  # noqa: E402
from utils.ranks import Ranks, run_together  # noqa: E402
from utils.report import category_line, exit_status, over_seeds, write_run_tables  # noqa: E402
from utils.runs import RunFolders, RunLock, make_folder  # noqa: E402


def train_category(trainer: Trainer, category: str, train_files: list[Path], settings: Settings,
                   folders: RunFolders, evaluate) -> int | None:
    """Adam over theta_B, theta_S, theta_G for EPOCHS epochs (Algorithm 1), resumable.

    The optimiser state is kept in the checkpoint only while the category trains: after
    the last epoch the checkpoint holds the weights alone. With SELECT=best_on_test
    the model ends with the weights of the best evaluation on the test set (the checkpoint
    keeps the last epoch's) and the epoch of those weights is returned.
    """
    training, run = settings.training, settings.run
    checkpoint = folders.checkpoints / f"{category}.pt"
    start = 0
    if settings.mode.resume and checkpoint.exists():
        trained = resumable(checkpoint, trainer.device, training)
        load_weights(trainer.model, trained, checkpoint)
        start = trained.epoch
        if start < training.epochs:
            trainer.optimizer.load_state_dict(trained.state["optimizer"])
        print(f"{category}: resuming after epoch {start}")
    elif settings.mode.resume:
        print(f"{category}: no checkpoint to resume from; training from the first epoch")
    if start >= training.epochs:
        return None
    train_set = TrainImages(train_files, category, training.image_size, alpha=training.alpha,
                            nsa_mode=training.nsa_mode, seed=training.seed, augment=training.ilm,
                            synthesis=training.synthesis)
    loader = DataLoader(train_set, batch_size=training.batch_size,
                        sampler=EpochSampler(len(train_set), training.seed, start),
                        num_workers=settings.machine.workers, persistent_workers=settings.machine.workers > 0,
                        pin_memory=trainer.device.type == "cuda", worker_init_fn=seed_worker)
    bar = progress(total=(training.epochs - start) * len(loader), desc=f"{category} training", unit="step")
    best = None  # (merit, epoch, weights) of the best evaluation, with SELECT=best_on_test
    for epoch in range(start, training.epochs):
        started = time.perf_counter()
        # Each epoch's random draws (FLM masks, DRD's feature noise) come from their own seed,
        # so a resumed run repeats them.
        epoch_seed = int(np.random.SeedSequence([training.seed, epoch]).generate_state(1)[0])
        torch.manual_seed(epoch_seed)
        try:
            loss = train_epoch(trainer, loader, MaskDraws(torch.Generator().manual_seed(epoch_seed)),
                               on_step=lambda value: (bar.update(), bar.set_postfix(loss=f"{value:.4f}")))
        except Diverged as error:
            bar.close()
            kept = f"the last good checkpoint is {checkpoint}" if checkpoint.exists() else "no checkpoint was saved yet"
            raise Diverged(f"{category}: training stopped in epoch {epoch + 1}: {error}; {kept}.") from None
        bar.write(f"{category} epoch {epoch + 1}/{training.epochs} loss {loss:.4f} "
                  f"({time.perf_counter() - started:.1f} s)")
        last = epoch + 1 == training.epochs
        if (epoch + 1) % run.checkpoint_every == 0 or last:
            try:
                save_checkpoint(checkpoint, trainer.model, None if last else trainer.optimizer, epoch + 1, training)
            except InputError:  # a full disk, say: the message, not the bar, is the last line
                bar.close()
                raise
        if run.eval_every and (epoch + 1) % run.eval_every == 0 and (run.select == "best_on_test" or not last):
            values = evaluate()
            if run.select == "last":
                bar.write(f"  diagnostic only, never used to pick a result: {category_line(category, values)}")
            elif best is None or metrics.selection_merit(values) > best[0]:
                best = (metrics.selection_merit(values), epoch + 1,
                        {name: value.detach().clone() for name, value in trainer.model.state_dict().items()})
    bar.close()
    if best is None:
        return None
    trainer.model.load_state_dict(best[2])
    return best[1]


def evaluate_category(trainer: Trainer, test_set: TestImages, settings: Settings
                      ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The four metrics (fractions), the image scores (N,) and the smoothed maps (N, S, S)."""
    scores, maps = score_set(trainer, test_set, settings)
    return metrics.evaluate(test_set.labels, scores, test_set.masks, maps), scores, maps


def run_category(settings: Settings, category: str, files: CategoryFiles, device: torch.device,
                 folders: RunFolders) -> dict[str, Any]:
    """Build, train (or load), evaluate after the last epoch, save predictions; returns the table row."""
    for present, kind in ((files.has_anomalies, "anomalous"), (files.has_normals, "normal")):
        if not present:  # AU-ROC needs both kinds: report the category instead of crashing on it
            print(f"{category}: skipped, its test set holds no {kind} image to evaluate on.")
            return {"category": category, "status": f"no {kind} test image"}
    protocol = ["RD++'s epochs per category"] if settings.run.category_epochs else []  # marks of a published one
    settings = category_settings(settings, category)
    training = settings.training
    seed_everything(training.seed)  # a fresh seed per category: results do not depend on the loop order
    compiled = COMPILATION.seconds, COMPILATION.compilations
    model, execution = build(training, settings.machine, device)
    trainer = Trainer.of(model, OBJECTIVES[training.loss], execution, device, training)
    test_set = TestImages(files.test, training.image_size)
    status = "ok"
    if settings.mode.eval_only:
        checkpoint = folders.checkpoints / f"{category}.pt"
        trained, partial = usable(checkpoint, device, settings, "evaluate")
        status = partial or status
        load_weights(model, trained, checkpoint)
    else:
        try:
            selected = train_category(trainer, category, files.train, settings, folders,
                                      evaluate=lambda: evaluate_category(trainer, test_set, settings)[0])
        except Diverged as error:
            print(error)
            return {"category": category, "status": "diverged"}
        if selected is not None:
            protocol.append("selected on the test set")
            status = f"ok, epoch {selected}"
    started = time.perf_counter()
    values, scores, maps = evaluate_category(trainer, test_set, settings)
    print(f"{category} evaluated in {time.perf_counter() - started:.1f} s")
    # The decision threshold for new images (--predict), by THRESHOLD's rule, and what each rule costs.
    decision = decide(trainer, settings, category, files, test_set.labels, scores, test_set.masks, maps,
                      folders.results)
    Predictions.of(category, scores, test_set.labels, [sample.defect for sample in test_set.samples], values,
                   decision["threshold"], decision["threshold_rule"], test_set.masks, maps, test_set.images,
                   *feature_examples(trainer, test_set, training.seed)
                   ).save(folders.results / "predictions" / f"{category}.npz")
    if settings.machine.compile:  # the first category of an architecture pays, later ones reuse its graphs
        print(COMPILATION.report(category, compiled))
    return {"category": category, **values, **decision, "status": status, "protocol": "; ".join(protocol)}


def run_categories(settings: Settings, folders: RunFolders, check_data: bool = True) -> list[dict[str, Any]]:
    """Every category in turn, once per seed of SEEDS (under torchrun: this rank's share of the
    (category, seed) pairs), the table rewritten after each, so nothing is lost on a crash;
    returns every category's row, in order, on every rank (with SEEDS: their mean and spread).

    check_data: decode every file first (False: an earlier row of the experiment did).
    """
    run = settings.run
    ranks = Ranks.from_launcher()
    categories = run.categories or DATASET_CATEGORIES[settings.training.dataset]
    work = [(category, seed) for category in categories for seed in run.seeds or (settings.training.seed,)]
    mine = ranks.share(work)
    # Every file of every category is found and decoded before any work.
    files = {category: category_files(settings.training.dataset, run.data_dir, category) for category in categories}
    if settings.training.threshold != "f1_test":  # normal images for the threshold, held out where none ship
        files = {category: with_validation(found) for category, found in files.items()}
    if check_data:
        ranks.agree(lambda: check_files({category: files[category] for category, _ in mine}))
    if not settings.mode.eval_only:
        for category in categories:
            settings.training.check_batches(len(files[category].train), category)
    device = pick_device(settings.machine.device, ranks.local_rank)
    lock = RunLock(folders.checkpoints, run.run_name)
    try:
        places = {seed: folders.seeded(seed) if run.seeds else folders for _, seed in work}
        checkpoints = {places[seed].checkpoints / f"{category}.pt":
                       category_settings(settings.seeded(seed), category).training for category, seed in work}
        ranks.agree(lambda: claim(settings, folders, lock, checkpoints), only_rank=0)
        paper = paper_rows(run.method, settings.training, categories)
        print(f"Run {run.run_name!r} ({run.method}) on {device}: {len(mine)} of {len(work)} trainings"
              f"{f' (rank {ranks.rank} of {ranks.world})' if ranks.world > 1 else ''}; results and figures in "
              f"{folders.results}, checkpoints in {folders.checkpoints}")
        rows = []
        for category, seed in mine:
            where = places[seed]
            make_folder(where.results / "predictions")
            rows.append({**run_category(settings.seeded(seed), category, files[category], device, where),
                         "seed": seed})
            print(category_line(category, rows[-1]))
            if ranks.rank == 0:
                write_run_tables(folders.results, rows, paper, bool(run.seeds))
            if run.figures and rows[-1]["status"].startswith(("ok", "partial")):
                draw_category(where.results / "predictions" / f"{category}.npz", where.results / "figures")
        if ranks.world > 1:  # the trainings of every rank, in the order of the list
            done = {(row["category"], row["seed"]): row for share in ranks.gather(rows) for row in share}
            rows = [done[item] for item in work]
        if ranks.rank == 0:
            print("\n" + write_run_tables(folders.results, rows, paper, bool(run.seeds)))
    finally:
        lock.release()
    return over_seeds(rows) if run.seeds else rows


def run_command(overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """The main job: every category, or with EXPERIMENT every row of a preset; with PREDICT, new
    images scored by a trained run; with EXPORT, its categories written as ONNX graphs."""
    if overrides.get("PREDICT") or overrides.get("EXPORT"):
        settings = recorded(CONSTANTS, overrides)
        return predict_run(settings) if settings.mode.predict else export_run(settings)
    settings = resolve(CONSTANTS, DEMO_CONFIG, METHODS, DATASETS, overrides)
    folders = settings.run.folders()
    if settings.run.demo:
        DEMO_DATASETS[settings.training.dataset](Path(settings.run.data_dir))
    if not settings.run.experiment:
        return run_categories(settings, folders)
    name = settings.run.experiment
    rows = [resolve(CONSTANTS, DEMO_CONFIG, METHODS, DATASETS, overrides,
                    {**row.constants, "EXPERIMENT": "", "RUN_NAME": slug(row.label)}) for row in PRESETS[name].rows]
    return run_experiment(name, rows, folders, run_categories)


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(usage(__doc__, Path(__file__), CONSTANTS, DEMO_CONFIG, {**METHODS, **DATASETS}))
        return 0
    elements = {name: kind for part in BUNDLES for name, kind in part.element_types().items()}
    try:  # every rank stops at once on bad input, the sentence printed once (utils/ranks.py)
        return run_together(lambda: exit_status(run_command(parse_overrides(CONSTANTS, argv, elements))))
    except KeyboardInterrupt:
        print("\ninterrupted; rerun with --resume=True to continue from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
