"""Latency of the exported graph under onnxruntime against the PyTorch path, on the CPU:
python -m model.benchmark_export [--repeats=N] [--threads=1,2] [--cases=resnet18:64,wide_resnet50_2:256]

For each (backbone, image size) of --cases (default CASES) a random-weight MRKD (weights=None: speed does not
depend on the weights) is exported with model/export.py, then random images are scored at
batch 1 and batch 8 by PyTorch (score_images with HashedDraws, fp32, as predict scores on the
CPU) and by onnxruntime's CPU provider, each with the same number of threads: PyTorch first,
before the onnxruntime session exists, so that neither's idle threads take the other's
cores. Prints the export time, the median milliseconds per image of `--repeats` timed runs
after one warm-up, and the largest relative difference of the scores (a check that both
compute the same thing).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from model.benchmark import settings_for
from model.engine import build, score_images
from model.export import Decision, export_onnx
from model.generator import HashedDraws

CASES = (("resnet18", 64), ("wide_resnet50_2", 256))
BATCHES = (1, 8)


def per_image_ms(run: Callable[[], np.ndarray], batch: int, repeats: int) -> tuple[float, np.ndarray]:
    """Median wall time of `repeats` calls after one warm-up, per image, in ms, and what the warm-up returned."""
    result = run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch, result


def benchmark(backbone: str, size: int, repeats: int, threads: tuple[int, ...], folder: Path) -> list[str]:
    """The printed lines of one case."""
    torch.manual_seed(0)
    settings = settings_for(BACKBONE=backbone, WEIGHTS=None, IMAGE_SIZE=size)
    model = build(settings.training, settings.machine, torch.device("cpu"))[0].eval()
    scoring, seed = settings.scoring, settings.training.seed
    path = folder / f"{backbone}_{size}.onnx"
    start = time.perf_counter()
    export_onnx(model, scoring, Decision(1.0, 0.0, 2.0), seed, size, {}, path)
    lines = [f"{backbone} at {size} px: export {time.perf_counter() - start:.0f} s, "
             f"{path.stat().st_size / 2**20:.0f} MiB"]
    images = torch.randn(max(BATCHES), 3, size, size, generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def pytorch(batch: torch.Tensor) -> np.ndarray:
        return score_images(model, batch, scoring, HashedDraws(batch, seed))[0].numpy()

    for count in threads:
        torch.set_num_threads(count)
        torch_runs = {batch: per_image_ms(lambda: pytorch(images[:batch]), batch, repeats) for batch in BATCHES}
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = count, 1
        onnx = scorer(onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"]))

        for batch in BATCHES:
            ort_ms, ort_scores = per_image_ms(lambda: onnx(images[:batch]), batch, repeats)
            torch_ms, torch_scores = torch_runs[batch]
            difference = np.abs(ort_scores / torch_scores - 1).max()
            lines.append(f"  {count} thread{'s' if count > 1 else ''}, batch {batch}: onnxruntime {ort_ms:7.1f} "
                         f"ms/image, PyTorch {torch_ms:7.1f} ms/image ({torch_ms / ort_ms:.2f}x), "
                         f"scores differ by {difference:.1e} (relative)")
    return lines


def scorer(session: onnxruntime.InferenceSession) -> Callable[[torch.Tensor], np.ndarray]:
    """The exported graph's image scores of a batch."""
    return lambda batch: session.run(["scores"], {"images": batch.numpy()})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}", help="thread counts to measure, comma-separated")
    parser.add_argument("--cases", default=",".join(f"{backbone}:{size}" for backbone, size in CASES),
                        help="backbone:image size pairs, comma-separated")
    args = parser.parse_args()
    threads = tuple(int(count) for count in args.threads.split(","))
    cases = [(backbone, int(size)) for backbone, size in (case.split(":") for case in args.cases.split(","))]
    print(f"CPU: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        for backbone, size in cases:
            print("\n".join(benchmark(backbone, size, args.repeats, threads, Path(folder))), flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
