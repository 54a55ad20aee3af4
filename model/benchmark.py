"""Speed of three ways to run MRKD on the current device: python -m model.benchmark [--flags].

(a) authors: the loop as the authors' code runs it: fp32, the teacher run twice (clean,
    then augmented images), evaluation one image at a time with the map blurred on the
    CPU by SciPy, metrics from Python lists and PRO per image over 200 thresholds.
(b) faithful: this project's default path: fp32, one teacher pass over both batches,
    batched evaluation with the Gaussian on the device, metrics on arrays collected once.
(c) fast: (b) with FAST=True: bf16 (or fp16) autocast, channels_last, cuDNN autotuner,
    and on a GPU fused Adam and the training step replayed as a CUDA graph.
(d) (b) without cuDNN's deterministic algorithms, to measure what determinism costs
    (run it with --variants=abcd).

`--rehearsal` instead rehearses the full MVTec AD reproduction: it generates MVTec-shaped
data (MVTec AD's categories, the first --categories of the 15, with their train and test
counts, drawn by the demo generator, cached), runs the real main.py on it for a few epochs
(through torchrun with --ranks=N), and projects the 15 x 200-epoch run from the steady epoch times. Its last line is
`projected full reproduction: MM.M min (N ranks, PATH)`, PATH fast or faithful, with
`_compile` under --compile (COMPILE=True, its compile time in the wall time it projects from).

Each variant runs in a fresh process, so its peak memory is its own. Training and
evaluation use random images and weights (speed does not depend on them); data
loading is not timed. Prints a table and, last, `speedup train X.XXx eval Y.YYx` of
(c) over (a).
"""
from __future__ import annotations

import argparse
import multiprocessing
import re
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from skimage import measure
from sklearn.metrics import auc, roc_auc_score
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from dataset.demo import DEFECTS, make_sample
from model.engine import COMPILATION, Execution, Trainer, build, pick_device, predict, train_epoch
from model.generator import MaskDraws
from model.loss import distillation_loss
from model.methods import mrkd_objective
from model.mrkd import MRKD
from model.settings import Settings, resolve
from utils import metrics
from utils.config import read_constants

# main.py's constants, read without running main.py.
MAIN = read_constants(Path(__file__).resolve().parent.parent / "main.py")
DEMO_CONFIG, METHODS, DATASETS = MAIN.pop("DEMO_CONFIG"), MAIN.pop("METHODS"), MAIN.pop("DATASETS")
CONSTANTS = MAIN


def settings_for(**overrides) -> Settings:
    """main.py's settings with these constants changed."""
    return resolve(CONSTANTS, DEMO_CONFIG, METHODS, DATASETS, overrides)

VARIANTS = {"a": "(a) authors", "b": "(b) faithful", "c": "(c) fast", "d": "(d) (b) not determ."}


def synthetic_batches(steps: int, batch: int, size: int, pin: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps):
        pair = torch.randn(2, batch, 3, size, size, generator=generator)
        batches.append((pair[0].pin_memory(), pair[1].pin_memory()) if pin else (pair[0], pair[1]))
    return batches


def synthetic_test_set(count: int, size: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Images (N, 3, S, S), masks (N, S, S) with a rectangle in 2 of 3 images, labels (N,)."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.standard_normal((count, 3, size, size), dtype=np.float32))
    masks = np.zeros((count, size, size), dtype=bool)
    for i in range(count):
        if i % 3:
            y, x = rng.integers(0, size * 3 // 4, 2)
            h, w = rng.integers(size // 16, size // 4, 2)
            masks[i, y:y + h, x:x + w] = True
    return images, masks, masks.any(axis=(1, 2)).astype(np.int64)


def authors_train_step(model: MRKD, optimizer: torch.optim.Optimizer, clean: torch.Tensor,
                       augmented: torch.Tensor, device: torch.device) -> None:
    clean, augmented = clean.to(device), augmented.to(device)
    target = model.teacher(clean)
    inputs = model.teacher(augmented)  # a second teacher pass
    loss = distillation_loss(target, model.restore(model.decode(inputs)))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def authors_pro(mask: np.ndarray, amap: np.ndarray, steps: int = 200) -> float:
    """PRO of one image the way the authors' code loops over thresholds and regions (slow on purpose)."""
    regions = measure.regionprops(measure.label(mask))
    fprs, pros = [], []
    low, high = amap.min(), amap.max()
    for threshold in np.arange(low, high, (high - low) / steps):
        binary = amap > threshold
        pros.append(np.mean([binary[r.coords[:, 0], r.coords[:, 1]].sum() / r.area for r in regions]))
        fprs.append(np.logical_and(binary, ~mask).sum() / (~mask).sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < 0.3
    return auc(fprs[keep] / fprs[keep].max(), pros[keep])


@torch.no_grad()
def authors_evaluate(model: MRKD, images: torch.Tensor, masks: np.ndarray, labels: np.ndarray,
                     device: torch.device, size: int) -> tuple[float, float, float]:
    """Image AU-ROC, pixel AU-ROC and per-image PRO, one image at a time."""
    model.eval()
    pixel_labels, pixel_scores, image_scores, pros = [], [], [], []
    for image, mask in zip(images, masks):
        target, _ = model.encode(image[None].to(device))
        restored = model.restore(model.decode(target))
        amap = sum(F.interpolate((1 - F.cosine_similarity(t, g))[:, None], size=size, mode="bilinear",
                                 align_corners=True) for t, g in zip(target, restored))
        amap = gaussian_filter(amap[0, 0].cpu().numpy(), sigma=CONSTANTS["SIGMA"])
        pixel_labels.extend(mask.astype(int).ravel())
        pixel_scores.extend(amap.ravel())
        image_scores.append(amap.max())
        if mask.any():
            pros.append(authors_pro(mask, amap))
    return roc_auc_score(labels, image_scores), roc_auc_score(pixel_labels, pixel_scores), float(np.mean(pros))


def evaluate(model: MRKD, images: torch.Tensor, masks: np.ndarray, labels: np.ndarray, device: torch.device,
             settings: Settings, execution: Execution) -> dict[str, float]:
    """The four metrics of this project's evaluation, batched on the device, with main.py's scoring constants."""
    loader = DataLoader(TensorDataset(images), batch_size=settings.training.batch_size,
                        pin_memory=device.type == "cuda")
    scores, maps = predict(model, loader, device, settings.scoring, execution, settings.training.seed)
    return metrics.evaluate(labels, scores, masks, maps)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_variant(variant: str, options: argparse.Namespace) -> dict[str, float]:
    """Train `steps` steps after `warmup` and evaluate one synthetic category; runs in its own process."""
    torch.manual_seed(0)
    device = pick_device(options.device)
    settings = settings_for(BACKBONE=options.backbone, WEIGHTS=None, IMAGE_SIZE=options.size,
                            BATCH_SIZE=options.batch, FAST=variant == "c", COMPILE=options.compile and variant == "c")
    model, execution = build(settings.training, settings.machine, device)
    if variant == "d":  # the faithful path without cuDNN's deterministic algorithms: what determinism costs
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    trainer = Trainer.of(model, mrkd_objective, execution, device, settings.training)
    batches = synthetic_batches(options.warmup + options.steps, options.batch, options.size, device.type == "cuda")
    draws = MaskDraws(torch.Generator().manual_seed(0))

    def train(chunk):
        if variant == "a":
            model.train()
            for clean, augmented in chunk:
                authors_train_step(model, trainer.optimizer, clean, augmented, device)
        else:
            train_epoch(trainer, chunk, draws)

    train(batches[:options.warmup])
    synchronize(device)
    started = time.perf_counter()
    train(batches[options.warmup:])
    synchronize(device)
    train_seconds = time.perf_counter() - started

    images, masks, labels = synthetic_test_set(options.eval_images, options.size)
    if variant == "a":
        authors_evaluate(model, images[:2], masks[:2], labels[:2], device, options.size)  # warm-up
    else:  # a full batch and a short one, as the timed evaluation has: compiled, each is a graph of its own
        evaluate(model, images[:options.batch + 2], masks[:options.batch + 2], labels[:options.batch + 2], device,
                 settings, execution)
    synchronize(device)
    started = time.perf_counter()
    if variant == "a":
        authors_evaluate(model, images, masks, labels, device, options.size)
    else:
        evaluate(model, images, masks, labels, device, settings, execution)
    synchronize(device)
    eval_seconds = time.perf_counter() - started

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, whole process
    return {"steps_per_second": options.steps / train_seconds,
            "images_per_second": options.steps * options.batch / train_seconds,
            "peak_gib": peak, "eval_seconds": eval_seconds,
            "compile_seconds": COMPILATION.seconds, "compilations": COMPILATION.compilations}


# MVTec AD's categories with their numbers of training and test images (Bergmann et al., CVPR 2019).
MVTEC_COUNTS = {
    "carpet": (280, 117), "grid": (264, 78), "leather": (245, 124), "tile": (230, 117), "wood": (247, 79),
    "bottle": (209, 83), "cable": (224, 150), "capsule": (219, 132), "hazelnut": (391, 110),
    "metal_nut": (220, 115), "pill": (267, 167), "screw": (320, 160), "toothbrush": (60, 42),
    "transistor": (213, 100), "zipper": (240, 151),
}
TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
GOOD_FRACTION = 0.25  # of each test set; the rest cycles through the demo's defects
EPOCH_LINE = re.compile(r"^(\S+) epoch (\d+)/\d+ loss \S+ \(([\d.]+) s\)", re.MULTILINE)
EVALUATION_LINE = re.compile(r"^(\S+) evaluated in ([\d.]+) s", re.MULTILINE)
COMPILE_LINE = re.compile(r"^(\S+) torch\.compile: (\d+) compilations, ([\d.]+) s", re.MULTILINE)


def write_rehearsal_category(root: Path, category: str, size: int) -> None:
    """One MVTec-shaped category of demo drawings at size x size (the texture or the nut)."""
    kind = "demo_texture" if category in TEXTURES else "demo_object"
    n_train, n_test = MVTEC_COUNTS[category]
    n_good = round(GOOD_FRACTION * n_test)
    folder = root / category
    draws = [("train/good", None, i) for i in range(n_train)] + [("test/good", None, i) for i in range(n_good)]
    draws += [(f"test/{DEFECTS[i % len(DEFECTS)]}", DEFECTS[i % len(DEFECTS)], i) for i in range(n_test - n_good)]
    for index, (where, defect, i) in enumerate(draws):
        sample = make_sample(kind, defect, np.random.default_rng([sorted(MVTEC_COUNTS).index(category), index]))
        (folder / where).mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.image).resize((size, size), Image.BILINEAR).save(folder / where / f"{i:03d}.png")
        if defect is not None:
            mask = Image.fromarray(sample.mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
            (folder / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            mask.save(folder / "ground_truth" / defect / f"{i:03d}_mask.png")


def make_rehearsal_data(root: Path, size: int, categories: list[str]) -> Path:
    """MVTec-shaped data of these categories under root/<size>/, each written once (a marker file records it)."""
    folder = root / str(size)
    missing = [category for category in categories if not (folder / f".{category}.complete").exists()]
    with ProcessPoolExecutor() as pool:
        list(pool.map(write_rehearsal_category, [folder] * len(missing), missing, [size] * len(missing)))
    for category in missing:
        (folder / f".{category}.complete").write_text("done\n")
    return folder


def rehearse(options: argparse.Namespace) -> None:
    """Run main.py on MVTec-shaped data for a few epochs and project the full reproduction."""
    started = time.perf_counter()
    categories = list(MVTEC_COUNTS)[:options.categories]
    data = make_rehearsal_data(Path(options.data), options.size, categories)
    print(f"data: {data} ({time.perf_counter() - started:.0f} s)", flush=True)
    path = ("fast" if options.fast else "faithful") + ("_compile" if options.compile else "")
    arguments = [f"--data_dir={data}", f"--categories={','.join(categories)}", f"--epochs={options.epochs}",
                 f"--image_size={options.size}", f"--backbone={options.backbone}", "--weights=none",
                 f"--fast={options.fast}", f"--compile={options.compile}", "--overwrite=True",
                 f"--run_name=rehearsal_{options.ranks}_{path}", f"--results_dir={options.data}/results",
                 f"--checkpoint_dir={options.data}/checkpoints", f"--device={options.device}"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={options.ranks}"]
                if options.ranks > 1 else [sys.executable])
    started = time.perf_counter()
    finished = subprocess.run([*launcher, "main.py", *arguments], capture_output=True, text=True)
    wall = time.perf_counter() - started
    log = Path(options.data) / f"rehearsal_{options.ranks}_{path}.log"
    log.write_text(finished.stdout + finished.stderr)
    if finished.returncode != 0:
        print(f"error: main.py failed (exit {finished.returncode}); its output is in {log}", file=sys.stderr)
        sys.exit(1)
    epochs: dict[str, list[float]] = {}
    for category, epoch, seconds in EPOCH_LINE.findall(finished.stdout):
        if int(epoch) > 1:  # the first epoch also pays for cuDNN's autotuner, the graph capture and compiling
            epochs.setdefault(category, []).append(float(seconds))
    steady = {category: statistics.median(times) for category, times in epochs.items()}
    evaluations = [float(seconds) for _, seconds in EVALUATION_LINE.findall(finished.stdout)]
    compiles = [float(seconds) for _, _, seconds in COMPILE_LINE.findall(finished.stdout)]  # each rank's first pays
    # Each rank runs every ranks-th category; the run lasts as long as its slowest rank.
    slowest = max(sum(steady[c] for c in categories[rank::options.ranks]) for rank in range(options.ranks))
    scale = len(MVTEC_COUNTS) / len(categories)  # a rehearsal of fewer categories speaks for all 15
    # The ranks compile at once, and once whatever the number of categories: not scaled.
    once = max(compiles, default=0.0)
    projected = scale * (wall - once + (CONSTANTS["EPOCHS"] - options.epochs) * slowest) + once
    images = sum(MVTEC_COUNTS[c][0] for c in categories)
    print(f"{len(categories)} categories, {options.epochs} epochs, {options.ranks} ranks, {path}: {wall:.0f} s; "
          f"steady epoch over all categories {sum(steady.values()):.1f} s of rank time "
          f"({images / sum(steady.values()) * options.ranks:.0f} images/s together), "
          f"evaluation {statistics.mean(evaluations):.1f} s per category"
          f"{f', compiling {sum(compiles):.0f} s of rank time' if options.compile else ''}; log in {log}")
    print(f"projected full reproduction: {projected / 60:.1f} min ({options.ranks} ranks, {path})")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--backbone", default=CONSTANTS["BACKBONE"])
    parser.add_argument("--size", type=int, default=CONSTANTS["IMAGE_SIZE"], help="image side (main.py's IMAGE_SIZE)")
    parser.add_argument("--batch", type=int, default=CONSTANTS["BATCH_SIZE"], help="batch size (main.py's BATCH_SIZE)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--eval_images", type=int, default=150, help="test images of the evaluated category")
    parser.add_argument("--variants", default="abc", help="which of a, b, c to run")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the fast path (c); with --rehearsal: COMPILE=True")
    parser.add_argument("--rehearsal", action="store_true", help="rehearse the full MVTec AD reproduction")
    parser.add_argument("--ranks", type=int, default=1, help="rehearsal: torchrun processes sharing the device")
    parser.add_argument("--fast", action="store_true", help="rehearsal: the fast path (FAST=True)")
    parser.add_argument("--epochs", type=int, default=3, help="rehearsal: epochs per category (at least 2)")
    parser.add_argument("--categories", type=int, default=15, help="rehearsal: the first N MVTec categories")
    parser.add_argument("--data", default="results/rehearsal", help="rehearsal: where data and runs go")
    options = parser.parse_args()
    if options.rehearsal:
        rehearse(options)
        return
    device = pick_device(options.device)
    print(f"{describe(device)}, torch {torch.__version__}: {options.backbone}, {options.size}x{options.size}, "
          f"batch {options.batch}, {options.steps} timed steps, {options.eval_images} test images")
    print(f"{'variant':<14}{'train steps/s':>15}{'images/s':>10}{'peak GiB':>10}{'eval s':>9}")
    context = multiprocessing.get_context("spawn")
    results = {}
    for variant in options.variants:
        with context.Pool(1) as pool:
            results[variant] = pool.apply(measure_variant, (variant, options))
        r = results[variant]
        print(f"{VARIANTS[variant]:<14}{r['steps_per_second']:>15.3f}{r['images_per_second']:>10.1f}"
              f"{r['peak_gib']:>10.2f}{r['eval_seconds']:>9.2f}", flush=True)
        if r["compilations"]:  # in the warm-up steps and the evaluation's warm-up, untimed
            print(f"{VARIANTS[variant]} compiled: {r['compilations']} compilations, {r['compile_seconds']:.1f} s",
                  flush=True)
    if device.type == "cpu":
        print("peak memory on the CPU is the process's peak resident set")
    if "a" in results and "c" in results:
        train = results["c"]["steps_per_second"] / results["a"]["steps_per_second"]
        evaluation = results["a"]["eval_seconds"] / results["c"]["eval_seconds"]
        print(f"speedup train {train:.2f}x eval {evaluation:.2f}x")


if __name__ == "__main__":
    cli()
