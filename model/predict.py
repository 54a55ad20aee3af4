"""A trained run used on new images: --predict scores them as its test set was scored, --export writes
each category's model as an ONNX graph that scores them without this repository.

--predict writes per category results/<run>/predict/<category>.csv, a row per image, and an
overlay per image under results/<run>/predict/<category>/ (the folders below the predicted
path kept); --export writes results/<run>/export/<category>.onnx and .json (model/export.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils.progress import progress

from dataset import ImageFiles, images_under
from model.engine import Execution, build, load_weights, pick_device, predict, seed_everything
from model.export import Decision, export_onnx
from model.mrkd import MRKD
from model.policy import usable
from model.settings import Settings
from utils import metrics
from utils.errors import InputError
from utils.figures import figure_overlay
from utils.predictions import Predictions
from utils.report import write_csv
from utils.runs import RunFolders, RunLock


def prediction_plan(settings: Settings, folders: RunFolders) -> dict[str, Predictions]:
    """Each category to score (CATEGORIES, or the run's only trained one) -> its evaluation,
    after checking that it has a checkpoint and a decision threshold."""
    run = settings.run
    trained = sorted(path.stem for path in folders.checkpoints.glob("*.pt"))
    if not trained:
        raise InputError(f"Run {run.run_name!r} has no checkpoint in {folders.checkpoints}; train it first, or give "
                         f"the --checkpoint_dir it was trained with.")
    if not run.categories and len(trained) > 1:
        raise InputError(f"Run {run.run_name!r} has checkpoints of {len(trained)} categories "
                         f"({', '.join(trained)}); choose the model with --categories=...")
    plan = {}
    for category in run.categories or trained:
        checkpoint = folders.checkpoints / f"{category}.pt"
        evaluated = folders.results / "predictions" / f"{category}.npz"
        if not checkpoint.is_file():
            raise InputError(f"Run {run.run_name!r} has no checkpoint of category {category!r} ({checkpoint} does "
                             f"not exist); its trained categories are {', '.join(trained)}.")
        if not evaluated.is_file():
            raise InputError(f"Category {category!r} of run {run.run_name!r} was never evaluated ({evaluated} does "
                             f"not exist); evaluate it with --run_name={run.run_name} --eval_only=True first.")
        plan[category] = Predictions.load(evaluated)
        if plan[category].threshold is None:
            raise InputError(f"{evaluated} holds no decision threshold (an older version evaluated it); evaluate "
                             f"again with --run_name={run.run_name} --eval_only=True.")
    return plan


def trained_model(settings: Settings, category: str, device, folders: RunFolders
                  ) -> tuple[MRKD, Execution, str]:
    """The category's trained model as main.py built it, its execution, and "" or a note saying
    that its checkpoint has not finished its epochs (refused unless --partial=True)."""
    seed_everything(settings.training.seed)  # a teacher with random weights (WEIGHTS=none) comes from the seed
    model, execution = build(settings.training, settings.machine, device)
    checkpoint = folders.checkpoints / f"{category}.pt"
    trained, partial = usable(checkpoint, device, settings, "predict")
    load_weights(model, trained, checkpoint)
    return model, execution, f" ({partial})" if partial else ""


def predict_category(settings: Settings, category: str, reference: Predictions, files: list[Path], root: Path,
                     device, folders: RunFolders) -> list[str]:
    """Score `files` with the category's checkpoint: results/<run>/predict/<category>.csv, a row per
    image, and <category>/<image name>.png, an overlay per image (folders below `root` kept).

    Returns the sentences naming the files that could not be read; every other file is scored.
    """
    training = settings.training
    model, execution, partial = trained_model(settings, category, device, folders)
    decision = Decision.of(reference)
    threshold, low, high, chosen = decision.threshold, decision.low, decision.high, metrics.RULE_LABELS[decision.rule]
    scale = (float(reference.example_maps.min()), float(reference.example_maps.max()))  # as Fig. 7's
    folder = folders.results / "predict" / category
    shutil.rmtree(folder, ignore_errors=True)  # an earlier call's overlays would not match the new CSV
    loader = DataLoader(ImageFiles(files, training.image_size), batch_size=training.batch_size,
                        num_workers=settings.machine.workers, pin_memory=device.type == "cuda")
    rows, unreadable = [], []
    bar = progress(total=len(files), desc=f"{category} scoring", unit="image", leave=False)
    for indices, images, pixels, problems in loader:
        readable = [k for k, problem in enumerate(problems) if not problem]
        unreadable += [problem for problem in problems if problem]
        if readable:
            scores, maps = predict(model, [(images[readable],)], device, settings.scoring, execution, training.seed)
            normalized = metrics.normalized_scores(scores, threshold, low, high)
            for k, score, normal_score, anomaly_map in zip(readable, scores, normalized, maps):
                path = files[int(indices[k])]
                anomalous = bool(score >= threshold)
                rows.append({"path": str(path), "score": float(score), "normalized_score": float(normal_score),
                             "anomalous": anomalous, "threshold": threshold, "threshold_chosen": chosen})
                title = (f"{path.name}: score {score:.4g} (normalized {normal_score:.2f}), "
                         f"{'anomalous' if anomalous else 'normal'}{partial}\nthreshold {threshold:.4g} {chosen}")
                overlay = folder / path.relative_to(root).parent / f"{path.name}.png"
                figure_overlay(pixels[k].numpy(), anomaly_map, scale, title, overlay)
        bar.update(len(problems))
    bar.close()
    table = folders.results / "predict" / f"{category}.csv"
    write_csv(table, ["path", "score", "normalized_score", "anomalous", "threshold", "threshold_chosen"], rows)
    flagged = sum(row["anomalous"] for row in rows)
    tqdm.write(f"{category}: {len(rows)} images scored{partial}, {flagged} anomalous (score >= {threshold:.4g}, "
               f"{chosen}); {table}, overlays in {folder}")
    return unreadable


def predict_run(settings: Settings) -> list[dict[str, Any]]:
    """Score every image under PREDICT with the run's trained categories, as its test set was scored.

    Unreadable images are skipped, and listed in one InputError once every readable one is scored.
    """
    run = settings.run
    folders = run.folders()
    device = pick_device(settings.machine.device)
    with RunLock(folders.checkpoints, run.run_name):
        plan = prediction_plan(settings, folders)
        files = images_under(settings.mode.predict)
        root = Path(settings.mode.predict).expanduser()
        root = root if root.is_dir() else root.parent
        print(f"Scoring {len(files)} images under {settings.mode.predict} with run {run.run_name!r} on {device}")
        unreadable = {}  # the same files fail for every category: each listed once
        for category, reference in plan.items():
            unreadable.update(dict.fromkeys(predict_category(settings, category, reference, files, root, device,
                                                             folders)))
    if unreadable:
        raise InputError.listed(f"{len(unreadable)} images could not be read, the others were scored; replace or "
                                f"remove these files:", list(unreadable))
    return [{"category": category, "status": "ok"} for category in plan]


def export_run(settings: Settings) -> list[dict[str, Any]]:
    """--export: each trained and evaluated category of the run as results/<run>/export/<category>.onnx,
    with its JSON (model/export.py), scoring as --predict does. Exported on the CPU in fp32."""
    run = settings.run
    folders = run.folders()
    cpu = settings.replace_for_export()
    with RunLock(folders.checkpoints, run.run_name):
        plan = prediction_plan(cpu, folders)
        for category, reference in plan.items():
            model, _, _ = trained_model(cpu, category, torch.device("cpu"), folders)
            path = folders.results / "export" / f"{category}.onnx"
            export_onnx(model, cpu.scoring, Decision.of(reference), cpu.training.seed, cpu.training.image_size,
                        cpu.record(), path)
            print(f"{category}: {path} and {path.with_suffix('.json')}")
    return [{"category": category, "status": "ok"} for category in plan]
