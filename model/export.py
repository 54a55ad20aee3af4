"""A trained model and its scoring as one ONNX graph, for scoring without this repository.

The graph takes a batch of preprocessed images (B, 3, S, S) float32, B free, and returns
the smoothed anomaly maps (B, S, S), the image scores (B,) and the normalized scores (B,).
It runs the function predict runs (model/engine.py: score_images) with the test-time FLM
masks hashed from each image (HashedDraws), so onnxruntime gives an image the score PyTorch gives it. Beside
`<name>.onnx`, `<name>.json` says how to preprocess an image and how to read the scores,
and holds the .onnx file's SHA-256, which check_export compares.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dataset.images import IMAGENET_MEAN, IMAGENET_STD
from model.engine import score_images
from model.generator import HashedDraws
from model.mrkd import MRKD
from model.settings import Scoring
from utils.errors import InputError
from utils.metrics import RULE_LABELS
from utils.files import write_atomically
from utils.predictions import Predictions

# The default opset of torch.onnx's exporter (its torchlib); onnxruntime runs it from 1.14 on.
EXPORT_OPSET = 18
# How new images are resized before normalisation: PIL's LANCZOS, as dataset/images.py: load_image.
RESIZE = "lanczos"
OUTPUTS = ("maps", "scores", "normalized_scores")


@dataclass(frozen=True)
class Decision:
    """How an image score reads: anomalous at or above `threshold` (chosen by `rule`, a key of
    utils/metrics.py: RULE_LABELS); `low` and `high`, the lowest and highest test-set scores, map to 0 and 1
    in the normalized score (utils/metrics.py: normalized_scores)."""

    threshold: float
    low: float
    high: float
    rule: str = "f1_test"

    @classmethod
    def of(cls, evaluated: Predictions) -> Decision:
        """The decision of a category's evaluation: its threshold and rule, its lowest and highest test score."""
        return cls(evaluated.threshold, float(evaluated.scores.min()), float(evaluated.scores.max()),
                   evaluated.threshold_rule)


def graph_normalized_scores(scores: torch.Tensor, threshold: float, low: float, high: float) -> torch.Tensor:
    """utils/metrics.py: normalized_scores in torch, for the graph: (B,) -> (B,) on [0, 1],
    low -> 0, threshold -> 0.5, high -> 1, linear in between, clipped."""
    below = 0.5 * (scores - low) / (threshold - low) if threshold > low else torch.zeros_like(scores)
    above = (0.5 + 0.5 * (scores - threshold) / (high - threshold) if high > threshold
             else 0.5 + 0.5 * (scores > threshold).to(scores.dtype))
    return torch.where(scores < threshold, below, above).clamp(0, 1)


class ScoringGraph(nn.Module):
    """What the ONNX graph computes: images (B, 3, S, S) -> maps (B, S, S), scores (B,),
    normalized scores (B,), as predict scores them in fp32 with HashedDraws masks."""

    def __init__(self, model: MRKD, scoring: Scoring, decision: Decision, seed: int):
        super().__init__()
        self.model, self.scoring, self.decision, self.seed = model, scoring, decision, seed

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores, maps = score_images(self.model, images, self.scoring, HashedDraws(images, self.seed))
        decision = self.decision
        return maps, scores, graph_normalized_scores(scores, decision.threshold, decision.low, decision.high)


def export_onnx(model: MRKD, scoring: Scoring, decision: Decision, seed: int, image_size: int,
                settings: dict[str, Any], path: Path) -> Path:
    """Write the scoring graph of a trained model to `path` (.onnx) and its description beside
    it (the same name, .json); returns the JSON's path.

    seed: the run's SEED, which the test-time masks are hashed with; settings: the run's
    record (config.json), stored as it is. The model is put in eval mode; export it on the
    CPU, uncompiled, in fp32 (the graph is device-independent).
    """
    if decision.rule not in RULE_LABELS:
        raise ValueError(f"unknown threshold rule {decision.rule!r}; one of {', '.join(RULE_LABELS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ScoringGraph(model.eval(), scoring, decision, seed).eval()
    device = next(model.parameters()).device
    # Batch 2 traced: a batch of 1 would be specialised into the graph.
    example = torch.zeros(2, 3, image_size, image_size, device=device)
    # torch.export's exporter (dynamo), the maintained one; external_data=False keeps the
    # weights inside the one file whose SHA-256 the JSON holds (ONNX's limit: 2 GB).
    torch.onnx.export(graph, (example,), path, input_names=["images"], output_names=list(OUTPUTS),
                      opset_version=EXPORT_OPSET, dynamo=True, external_data=False, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    description = {
        "onnx_file": path.name,
        "onnx_sha256": sha256(path),
        "opset": EXPORT_OPSET,
        "input": "images: (B, 3, S, S) float32, RGB resized to S x S, then (pixel / 255 - mean) / std",
        "outputs": {"maps": "(B, S, S) smoothed anomaly maps", "scores": "(B,) image scores",
                    "normalized_scores": "(B,) on [0, 1]; 0.5 is the threshold"},
        "image_size": image_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "resize": RESIZE,
        "threshold": decision.threshold,
        "threshold_rule": decision.rule,
        "threshold_chosen": RULE_LABELS[decision.rule],
        "low": decision.low,
        "high": decision.high,
        "scoring": scoring.record(),
        "seed": seed,
        "settings": settings,
    }
    description_path = path.with_suffix(".json")
    write_atomically(description_path, json.dumps(description, indent=2) + "\n")
    return description_path


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def check_export(onnx_path: Path, json_path: Path) -> dict[str, Any]:
    """The description `json_path` holds, after checking that it describes the file `onnx_path`
    (its SHA-256); an InputError in one sentence when it does not or a file cannot be read."""
    try:
        description = json.loads(Path(json_path).read_text())
        digest = sha256(Path(onnx_path))
    except (OSError, ValueError) as error:
        raise InputError(f"Cannot read the export {onnx_path} with {json_path} ({error}); export the model "
                         f"again.") from None
    if not isinstance(description, dict) or description.get("onnx_sha256") != digest:
        raise InputError(f"{onnx_path} is not the model {json_path} describes (their SHA-256 differ); use the "
                         f".onnx and .json written together by one export, or export again.")
    return description
