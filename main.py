"""MRKD: masked reverse knowledge distillation for image anomaly detection.

Jiang, Cao, Shen, Knowledge-Based Systems 280 (2023) 110982. Trains one model per
category, evaluates it after the last epoch and prints the paper's metrics.

    python main.py                          # the paper's MVTec AD run, all 15 categories
    python main.py --demo                   # the whole pipeline on generated demo data, CPU minutes
    python main.py --categories=bottle,cable --epochs=50 --run_name=try1
    python main.py --help                   # the constants below, with their sources

Every UPPER_CASE constant below can be overridden as --name=value (lower case;
lists comma-separated; none for no value).
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

# ---- constants (each names its source) -------------------------------------------------
# Data
DATA_DIR = "data/mvtec_anomaly_detection"  # where the dataset is unpacked
DATASET = "mvtec"               # "mvtec" (Tables 1-2), "mtd" (Table 3) or "btad" (Table 4); Sec. 4.1
CATEGORIES = ()                 # categories to run; empty: every category of DATASET
IMAGE_SIZE = 256                # Sec. 4.1: images resized to 256x256
# Method
METHOD = "mrkd"                 # "mrkd" (this paper) or "drd" (DRD, Ge et al. 2025: METHOD_DEFAULTS below)
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
OVERWRITE = False               # allow a new run to replace an existing run's results
FIGURES = True                  # draw Fig. 6, 7, 9 and ROC curves per category into results/<run>/figures/
DEMO = False                    # run on generated demo data with DEMO_CONFIG below
EXPERIMENT = ""                 # a preset of utils/presets.py: table3 ... table8, fig11, family (every row at once)
# ----------------------------------------------------------------------------------------
CONSTANTS = {name: value for name, value in dict(globals()).items() if name.isupper()}

# What --demo changes (other overrides still apply on top): small images, a few epochs and
# random teacher weights, so the whole pipeline runs in minutes on a 2-core CPU, offline.
DEMO_CONFIG = dict(
    DATA_DIR="results/demo_data", DATASET="mvtec", CATEGORIES=("demo_texture", "demo_object"),
    IMAGE_SIZE=64, BACKBONE="resnet18", WEIGHTS=None, EPOCHS=20, BATCH_SIZE=8, WORKERS=0,
    RUN_NAME="demo", OVERWRITE=True,
)

import numpy as np  # noqa: E402  (after the constants, so they stay at the top of the file)
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataset import CATEGORIES as DATASET_CATEGORIES  # noqa: E402
from dataset import CategoryFiles, EpochSampler, TestImages, TrainImages, category_files, seed_worker  # noqa: E402
from dataset.images import SYNTHESES  # noqa: E402
from dataset.demo import make_demo_dataset  # noqa: E402
from dataset.nsa import MODES as NSA_MODES  # noqa: E402
from model import BOTTLENECKS, MRKD, build_model, drd  # noqa: E402
from model.teacher import check_backbone  # noqa: E402
from utils import metrics  # noqa: E402
from utils.config import apply_overrides  # noqa: E402
from utils.engine import (IMAGE_SCORES, Diverged, Execution, Objective, Scoring, execution_for,  # noqa: E402
                          level1_features, load_checkpoint, pick_device, predict, save_checkpoint, seed_everything, train_epoch)
from utils.errors import InputError  # noqa: E402
from utils.figures import (draw_category, figure_features, figure_lambda_sweep, load_predictions,  # noqa: E402
                           pca_project)
from utils.presets import PRESETS, Preset, slug, training_key  # noqa: E402
from utils.paper import PAPER  # noqa: E402
from utils.report import category_line, with_mean, write_tables  # noqa: E402

# What METHOD changes (before the command line's overrides): DRD's parts and its training
# constants (model/drd.py, from its public implementation). RD4AD needs no entry: it is
# MRKD with ILM and FLM off.
METHOD_DEFAULTS = {
    "mrkd": {},
    "drd": dict(BOTTLENECK="mfcf", SYNTHESIS="drd", IMAGE_SCORE="refined", FLM=False, ILM=True, **drd.TRAINING),
}


def resolve_config(argv: list[str], row: dict[str, Any] | None = None) -> dict[str, Any]:
    """The constants, then DEMO_CONFIG (with --demo), the METHOD's defaults, the command line,
    and last an experiment row's constants (so a row always is what its table says)."""
    row = row or {}
    given = apply_overrides(CONSTANTS, argv)
    method = row.get("METHOD", given["METHOD"])
    if method not in METHOD_DEFAULTS:
        raise InputError(f"METHOD must be one of {', '.join(METHOD_DEFAULTS)}.")
    base = {**CONSTANTS, **(DEMO_CONFIG if given["DEMO"] else {}), **METHOD_DEFAULTS[method]}
    config = {**apply_overrides(base, argv), **row}
    if config["EXPERIMENT"] and config["RUN_NAME"] == CONSTANTS["RUN_NAME"]:
        config["RUN_NAME"] = config["EXPERIMENT"]
    check_config(config)
    return config


def check_config(config: dict[str, Any]) -> None:
    """One clear sentence for a constant outside its range."""
    rules = [
        (config["EXPERIMENT"] in ("", *PRESETS), f"EXPERIMENT must be one of {', '.join(PRESETS)}"),
        (config["DATASET"] in DATASET_CATEGORIES, f"DATASET must be one of {', '.join(DATASET_CATEGORIES)}"),
        (config["IMAGE_SIZE"] >= 32 and config["IMAGE_SIZE"] % 32 == 0, "IMAGE_SIZE must be a multiple of 32"),
        (0 <= config["FLM_RATIO"] < 1, "FLM_RATIO (lambda) must lie in [0, 1)"),
        (0 <= config["ALPHA"] <= 1, "ALPHA must lie in [0, 1]"),
        (config["NSA_MODE"] in NSA_MODES, f"NSA_MODE must be one of {', '.join(NSA_MODES)}"),
        (config["SYNTHESIS"] in SYNTHESES, f"SYNTHESIS must be one of {', '.join(SYNTHESES)}"),
        (config["BOTTLENECK"] in BOTTLENECKS, f"BOTTLENECK must be one of {', '.join(BOTTLENECKS)}"),
        (config["IMAGE_SCORE"] in IMAGE_SCORES, f"IMAGE_SCORE must be one of {', '.join(IMAGE_SCORES)}"),
        (config["METHOD"] != "drd" or config["ILM"], "METHOD=drd trains on pseudo-abnormal images: it needs ILM=True"),
        (config["WEIGHT_DECAY"] >= 0, "WEIGHT_DECAY must be at least 0"),
        (len(config["SCORE_LEVELS"]) > 0 and set(config["SCORE_LEVELS"]) <= {1, 2, 3},
         "SCORE_LEVELS must be a non-empty subset of 1,2,3"),
        (config["EPOCHS"] >= 1 and config["BATCH_SIZE"] >= 1, "EPOCHS and BATCH_SIZE must be at least 1"),
        (config["EVAL_MASKS"] >= 1, "EVAL_MASKS must be at least 1"),
        (config["WORKERS"] >= 0 and config["CHECKPOINT_EVERY"] >= 1 and config["EVAL_EVERY"] >= 0,
         "WORKERS and EVAL_EVERY must be at least 0, CHECKPOINT_EVERY at least 1"),
        (len(config["BETAS"]) == 2 and all(0 <= b < 1 for b in config["BETAS"]), "BETAS must be two numbers in [0, 1)"),
        (re.fullmatch(r"[\w.-]+", config["RUN_NAME"] or "") is not None,
         "RUN_NAME must be letters, digits, '_', '-' or '.'"),
    ]
    for ok, message in rules:
        if not ok:
            raise InputError(f"{message}.")
    check_backbone(config["BACKBONE"])


def claim_folders(config: dict[str, Any], results: Path, checkpoints: Path) -> None:
    """Create a run's folders, refusing to replace another run's results by accident."""
    reusing = config["RESUME"] or config["EVAL_ONLY"] or config["OVERWRITE"]
    if (results / "config.json").exists() and not reusing:
        raise InputError(f"A run named {config['RUN_NAME']!r} exists in {results}; choose another --run_name, "
                         f"or --resume=True, --eval_only=True or --overwrite=True.")
    (results / "predictions").mkdir(parents=True, exist_ok=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    (results / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def train_category(model: MRKD, category: str, train_files: list[Path], test_set: TestImages,
                   config: dict[str, Any], device: torch.device, execution: Execution, checkpoint: Path) -> None:
    """Adam over theta_B, theta_S, theta_G for EPOCHS epochs (Algorithm 1), resumable."""
    seed = config["SEED"]
    train_set = TrainImages(train_files, category, config["IMAGE_SIZE"], alpha=config["ALPHA"],
                            nsa_mode=config["NSA_MODE"], seed=seed, augment=config["ILM"],
                            synthesis=config["SYNTHESIS"])
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=config["LEARNING_RATE"], betas=config["BETAS"],
                                 weight_decay=config["WEIGHT_DECAY"])
    objective = Objective(config["METHOD"], config["ILM"])
    start = 0
    if config["RESUME"] and checkpoint.exists():
        start = load_checkpoint(checkpoint, model, optimizer, device)["epoch"]
        tqdm.write(f"{category}: resuming after epoch {start}")
    epochs = config["EPOCHS"]
    if start >= epochs:
        return
    loader = DataLoader(train_set, batch_size=config["BATCH_SIZE"], sampler=EpochSampler(len(train_set), seed, start),
                        num_workers=config["WORKERS"], persistent_workers=config["WORKERS"] > 0,
                        pin_memory=device.type == "cuda", worker_init_fn=seed_worker)
    bar = tqdm(total=(epochs - start) * len(loader), desc=f"{category} training", unit="step", dynamic_ncols=True)
    for epoch in range(start, epochs):
        started = time.perf_counter()
        # Each epoch's random draws (FLM masks, DRD's feature noise) come from their own seed,
        # so a resumed run repeats them.
        epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
        torch.manual_seed(epoch_seed)
        mask_generator = torch.Generator().manual_seed(epoch_seed)
        try:
            loss = train_epoch(model, loader, optimizer, device, objective, mask_generator, execution,
                               on_step=lambda value: (bar.update(), bar.set_postfix(loss=f"{value:.4f}")))
        except Diverged as error:
            bar.close()
            kept = f"the last good checkpoint is {checkpoint}" if checkpoint.exists() else "no checkpoint was saved yet"
            raise Diverged(f"{category}: training stopped in epoch {epoch + 1}: {error}; {kept}.") from None
        tqdm.write(f"{category} epoch {epoch + 1}/{epochs} loss {loss:.4f} ({time.perf_counter() - started:.1f} s)")
        if (epoch + 1) % config["CHECKPOINT_EVERY"] == 0 or epoch + 1 == epochs:
            save_checkpoint(checkpoint, model, optimizer, epoch + 1, config)
        if config["EVAL_EVERY"] and (epoch + 1) % config["EVAL_EVERY"] == 0 and epoch + 1 < epochs:
            diagnostic = evaluate_category(model, test_set, config, device, execution)[0]
            tqdm.write(f"  diagnostic only, never used to pick a result: {category_line(category, diagnostic)}")
    bar.close()


def evaluate_category(model: MRKD, test_set: TestImages, config: dict[str, Any], device: torch.device,
                      execution: Execution) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The four metrics (fractions), the image scores (N,) and the smoothed maps (N, S, S)."""
    # The test images are preloaded: worker processes would only add their start-up time.
    loader = DataLoader(test_set, batch_size=config["BATCH_SIZE"], shuffle=False, pin_memory=device.type == "cuda")
    scoring = Scoring(config["IMAGE_SIZE"], config["SCORE_LEVELS"], config["SIGMA"], config["EVAL_MASKS"],
                      config["SEED"], config["IMAGE_SCORE"])
    scores, maps = predict(model, loader, device, scoring, execution)
    values = {
        "image_auroc": metrics.image_auroc(test_set.labels, scores),
        "pixel_auroc": metrics.pixel_auroc(test_set.masks, maps),
        "aupro": metrics.aupro(test_set.masks, maps),
        "aupro_per_image": metrics.aupro_per_image(test_set.masks, maps),
    }
    return values, scores, maps


def run_category(config: dict[str, Any], category: str, files: CategoryFiles, device: torch.device,
                 results: Path, checkpoints: Path) -> dict[str, Any]:
    """Build, train (or load), evaluate after the last epoch, save; returns the table row."""
    for present, kind in ((files.has_anomalies, "anomalous"), (files.has_normals, "normal")):
        if not present:  # AU-ROC needs both kinds: report the category instead of crashing on it
            tqdm.write(f"{category}: skipped, its test set holds no {kind} image to evaluate on.")
            return {"category": category, "status": f"no {kind} test image"}
    seed_everything(config["SEED"])  # a fresh seed per category: results do not depend on the loop order
    model = build_model(config["BACKBONE"], config["WEIGHTS"], config["FLM_RATIO"], config["FLM"],
                        config["BOTTLENECK"]).to(device)
    execution = execution_for(device, config["FAST"])
    if execution.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config["COMPILE"]:
        for part in (model.teacher, model.bottleneck, model.student, *model.generators):
            part.compile()  # each part, since training and evaluation call them separately
    checkpoint = checkpoints / f"{category}.pt"
    test_set = TestImages(files.test, config["IMAGE_SIZE"])
    if config["EVAL_ONLY"]:
        load_checkpoint(checkpoint, model, None, device)
    else:
        try:
            train_category(model, category, files.train, test_set, config, device, execution, checkpoint)
        except Diverged as error:
            tqdm.write(str(error))
            return {"category": category, "status": "diverged"}
    values, scores, maps = evaluate_category(model, test_set, config, device, execution)
    save_predictions(results / "predictions" / f"{category}.npz", category, model, test_set, scores, maps,
                     values, config, device)
    if config["FIGURES"]:
        draw_category(results / "predictions" / f"{category}.npz", results / "figures")
    return {"category": category, **values, "status": "ok"}


def save_predictions(path: Path, category: str, model: MRKD, test_set: TestImages, scores: np.ndarray,
                     maps: np.ndarray, values: dict[str, float], config: dict[str, Any], device: torch.device) -> None:
    """What the figures need, so they can be redrawn without retraining: scores, ROC, a few examples."""
    anomalous = np.flatnonzero(test_set.labels == 1)
    examples = anomalous[np.linspace(0, len(anomalous) - 1, min(4, len(anomalous))).round().astype(int)]
    images = torch.stack([test_set[i][0] for i in examples])
    feature_input, feature_restored = pca_project(*level1_features(model, images, device, config["SEED"]))
    pixel_fpr, pixel_tpr = metrics.roc_curve(test_set.masks.ravel(), maps.ravel())
    np.savez_compressed(
        path, category=category, scores=scores, labels=test_set.labels,
        defects=np.array([sample.defect for sample in test_set.samples]),
        metrics_names=np.array(list(values)), metrics_values=np.array(list(values.values())),
        pixel_fpr=pixel_fpr, pixel_tpr=pixel_tpr, example_index=examples,
        example_images=test_set.images[examples], example_masks=test_set.masks[examples],
        example_maps=maps[examples], feature_input=feature_input, feature_restored=feature_restored,
    )


def run(config: dict[str, Any], argv: list[str]) -> list[dict[str, Any]]:
    """The main job: every category, or with EXPERIMENT every row of a preset."""
    if config["DEMO"]:
        make_demo_dataset(Path(config["DATA_DIR"]))
    results = Path(config["RESULTS_DIR"]) / config["RUN_NAME"]
    checkpoints = Path(config["CHECKPOINT_DIR"]) / config["RUN_NAME"]
    if config["EXPERIMENT"]:
        return run_experiment(config, argv, results, checkpoints)
    return run_categories(config, results, checkpoints)


def run_categories(config: dict[str, Any], results: Path, checkpoints: Path) -> list[dict[str, Any]]:
    """Every category in turn; the table is rewritten after each, so nothing is lost on a crash."""
    categories = config["CATEGORIES"] or DATASET_CATEGORIES[config["DATASET"]]
    # The data of every category is checked before any work.
    files = {category: category_files(config["DATASET"], config["DATA_DIR"], category) for category in categories}
    device = pick_device(config["DEVICE"])
    claim_folders(config, results, checkpoints)
    paper = paper_rows(config, categories)
    print(f"Run {config['RUN_NAME']!r} ({config['METHOD']}) on {device}: {len(categories)} categories, "
          f"results in {results}")
    rows = []
    for category in categories:
        rows.append(run_category(config, category, files[category], device, results, checkpoints))
        tqdm.write(category_line(category, rows[-1]))
        table = write_tables(results, "metrics", rows, paper)
    print("\n" + table)
    return rows


def run_experiment(config: dict[str, Any], argv: list[str], results: Path, checkpoints: Path) -> list[dict[str, Any]]:
    """Each row of a preset as a run of its own in results/<run>/<row>/, then the preset's table.

    Rows that differ only in evaluation constants (Table 7) evaluate the checkpoints of
    the first row trained like them instead of training again.
    """
    preset = PRESETS[config["EXPERIMENT"]]
    trained: dict[tuple, str] = {}  # training key -> the folder holding its checkpoints
    rows = []
    for row in preset.rows:
        row_config = resolve_config(argv, {**row.constants, "EXPERIMENT": "", "RUN_NAME": slug(row.label)})
        key = training_key(row)
        if key in trained:
            row_config["EVAL_ONLY"] = True
        folder = trained.setdefault(key, slug(row.label))
        print(f"\n{preset.title}: {row.label}")
        categories = run_categories(row_config, results / slug(row.label), checkpoints / folder)
        failed = any(category["status"] == "diverged" for category in categories)
        rows.append({**with_mean(categories)[-1], "category": row.label, "status": "diverged" if failed else "ok"})
    reported = any(value is not None for row in preset.rows for value in row.paper)
    paper = {row.label: row.paper for row in preset.rows} if reported else None
    note = (f"{preset.title}. Ours: the mean over the categories run, each evaluated once after the last "
            f"epoch; paper: the MVTec AD mean it reports, AU-PRO as the authors compute it (compare with "
            f"aupro_per_image).")
    print("\n" + write_tables(results, config["EXPERIMENT"], rows, paper, note, mean=False))
    draw_experiment(preset, rows, results)
    return rows


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


def paper_rows(config: dict[str, Any], categories: tuple[str, ...]) -> dict[str, tuple] | None:
    """The reported numbers of the method run (RD4AD when ILM and FLM are off) for the categories
    run; the paper's mean only when every category of the dataset was run."""
    method = config["METHOD"] if config["ILM"] or config["FLM"] else "rd4ad"
    paper = PAPER.get((method, config["DATASET"]), {})
    rows = {name: paper[name] for name in categories if name in paper}
    if "mean" in paper and set(DATASET_CATEGORIES[config["DATASET"]]) <= set(categories):
        rows["mean"] = paper["mean"]
    return rows or None


def usage() -> str:
    """The module docstring and the constants block of this file, as the help text."""
    source = Path(__file__).read_text()
    block = source[source.index("# ---- constants"):source.index("CONSTANTS = ")]
    return __doc__ + "\n" + block


def main(argv: list[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(usage())
        return 0
    try:
        rows = run(resolve_config(argv), argv)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; rerun with --resume=True to continue from the last checkpoint", file=sys.stderr)
        return 130
    return 1 if any(row["status"] == "diverged" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
