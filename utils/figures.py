"""Figures of Section 4 drawn from a run's saved predictions, so they can be redrawn without retraining.

They read one category's evaluation, `utils.predictions.Predictions`.

Figures: Fig. 6 `figure_score_density`, Fig. 7 `figure_examples`, ROC curves
`figure_roc`, Fig. 9 `figure_features`, Fig. 11 `figure_lambda_sweep`; for a new image
scored with --predict, `figure_overlay`.
Figures are `matplotlib.figure.Figure` objects rendered by Agg, never registered with
pyplot: no global state, no backend to select, and each is freed once saved. matplotlib
is imported at the first figure (`_figure`): a process that draws none (a run with
FIGURES=False, --export, --help) starts half a second sooner.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from utils.files import atomic_write
from utils.metrics import METRICS, roc_curve
from utils.predictions import Predictions

if TYPE_CHECKING:
    from matplotlib.figure import Figure


DPI = 110            # the PNGs' resolution
PANEL_INCHES = 2.4   # side of one image panel in the grids of Fig. 7 and Fig. 9
PCA_COMPONENTS = 3   # shown as RGB (Sec. 4.4, Fig. 9)

def pca_project(reference: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Features on the 3 principal components of the reference's pixels, for Fig. 9.

    reference: (k, C, h, w), e.g. the student's input features f_T^1; others: more
    (k', C, h', w') arrays, e.g. the restored features f_G^1. The PCA is fitted on every
    pixel of the reference (the SVD of the centred (k*h*w, C) matrix, in float64) and the
    same mean and components project all arrays, so colours compare across panels.
    Returns [(k, h, w, 3) float32 for the reference, then one per other array].
    """
    if reference.ndim != 4 or reference.shape[1] < PCA_COMPONENTS:
        raise ValueError(f"reference must have shape (k, C, h, w) with C >= {PCA_COMPONENTS}; "
                         f"got {reference.shape}.")
    channels = reference.shape[1]
    for other in others:
        if other.ndim != 4 or other.shape[1] != channels:
            raise ValueError(f"every array must have shape (k, {channels}, h, w) like the reference; "
                             f"got {other.shape}.")
    pixels = _pixels(reference)                                           # (k*h*w, C)
    mean = pixels.mean(axis=0)                                            # (C,)
    _, _, right_vectors = np.linalg.svd(pixels - mean, full_matrices=False)
    components = right_vectors[:PCA_COMPONENTS]                           # (3, C)
    # The SVD fixes each component only up to its sign; making its largest entry positive
    # gives the same colours in every run (and in a second run fitted on the same features).
    largest = np.abs(components).argmax(axis=1)
    components = components * np.sign(components[np.arange(PCA_COMPONENTS), largest])[:, None]
    return [((_pixels(array) - mean) @ components.T)
            .reshape(array.shape[0], array.shape[2], array.shape[3], PCA_COMPONENTS)
            .astype(np.float32)
            for array in (reference, *others)]


def figure_score_density(pred: Predictions, path: Path) -> None:
    """Fig. 6 for one category: densities of normal (blue) and anomalous (red) image scores.

    Scores are min-max normalised over the test set, as the paper's axis runs from 0 to
    1; a histogram (density) under a Gaussian KDE per class.
    """
    from scipy.stats import gaussian_kde  # here, as matplotlib is: only a process that draws loads it
    scores = pred.scores.astype(np.float64)                            # (N,)
    span = scores.max() - scores.min()
    normalised = (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)
    figure = _figure(5.6, 3.8)
    axes = figure.add_subplot()
    grid = np.linspace(0.0, 1.0, 400)
    bins = np.linspace(0.0, 1.0, 26)
    for label, name, colour in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        values = normalised[pred.labels == label]
        if values.size == 0:
            continue
        axes.hist(values, bins=bins, density=True, color=colour, alpha=0.25)
        legend = f"{name} ({values.size} images)"
        if np.unique(values).size < 2:
            # A single distinct value has no spread and gaussian_kde raises: mark the value instead.
            axes.axvline(values[0], color=colour, linewidth=2, label=legend)
        else:
            axes.plot(grid, gaussian_kde(values)(grid), color=colour, linewidth=2, label=legend)
    axes.set_xlim(-0.02, 1.02)  # a margin keeps a vertical line at 0 or 1 visible
    axes.set_xlabel("anomaly score (min-max normalised over the test set)")
    axes.set_ylabel("density")
    axes.set_title(f"{pred.category}: image scores, image AU-ROC {pred.metrics['image_auroc']:.1%}")
    axes.legend()
    _save(figure, path)


def figure_examples(pred: Predictions, path: Path) -> None:
    """Fig. 7 for one category: per example, the input, its ground truth in red and the anomaly map.

    All rows share one colour scale (the min and max over every example map), so a
    hotter colour means a higher score in every row.
    """
    images, masks, maps = pred.example_images, pred.example_masks, pred.example_maps
    figure, grid = _grid(("input", "ground truth", "anomaly map"), _example_labels(pred))
    low, high = float(maps.min()), float(maps.max())
    for row, image, mask, anomaly_map in zip(grid, images, masks, maps):
        row[0].imshow(image)
        row[1].imshow(image)
        if mask.any():  # a good example has no region to outline
            row[1].contour(mask.astype(np.float32), levels=[0.5], colors="red", linewidths=1.5)
        row[2].imshow(image)
        heat = row[2].imshow(anomaly_map, cmap="jet", alpha=0.5, vmin=low, vmax=high)
    _colour_bar(figure, heat, grid[:, 2])
    figure.suptitle(f"{pred.category}: localisation, pixel AU-ROC {pred.metrics['pixel_auroc']:.1%}")
    _save(figure, path)


def figure_overlay(image: np.ndarray, anomaly_map: np.ndarray, scale: tuple[float, float], title: str,
                   path: Path) -> None:
    """A new image with its anomaly map over it (jet, half transparent) and the score in the title.

    image (S, S, 3) uint8, anomaly_map (S, S); scale: the (min, max) of the colour map,
    the same for every image of a category (its Fig. 7 examples' range), so that a hotter
    colour means a higher score on every overlay.
    """
    figure = _figure(4.6, 4.0)
    axes = figure.add_subplot()
    axes.imshow(image)
    heat = axes.imshow(anomaly_map, cmap="jet", alpha=0.5, vmin=scale[0], vmax=scale[1])
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title, fontsize=9)
    _colour_bar(figure, heat, axes)
    _save(figure, path)


def figure_roc(pred: Predictions, path: Path) -> None:
    """ROC curves of one category: image scores (left) and all pixels of the test set (right)."""
    metrics = pred.metrics
    panels = (("image ROC", roc_curve(pred.labels, pred.scores), metrics["image_auroc"]),
              ("pixel ROC", (pred.pixel_fpr, pred.pixel_tpr), metrics["pixel_auroc"]))
    figure = _figure(8.4, 4.4)
    for axes, (title, (fpr, tpr), auroc) in zip(figure.subplots(1, 2), panels):
        axes.plot(fpr, tpr, color="tab:red", linewidth=2, label=f"AU-ROC {auroc:.1%}")
        axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
        axes.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title=title,
                 xlabel="false positive rate", ylabel="true positive rate")
        axes.legend(loc="lower right")
    figure.suptitle(pred.category)
    _save(figure, path)


def figure_features(with_flm: Predictions, without_flm: Predictions | None, path: Path) -> None:
    """Fig. 9: level-1 features of the examples as RGB of their first 3 principal components.

    Columns: input image, input feature, restored feature of the run without FLM (ILM
    only; omitted when without_flm is None) and of the run with FLM. Both runs must hold
    the same test images and input features (the frozen teacher's), hence one PCA
    basis. Each row maps all its features to [0, 1] with the per-channel min and max of
    its input feature, the others clipped, so a restoration error shows as a colour change.
    """
    if without_flm is not None:
        _check_same_inputs(with_flm, without_flm)
    features = [("input feature", with_flm.feature_input)]           # each (k, h, w, 3)
    if without_flm is not None:
        features.append(("restored, ILM", without_flm.feature_restored))
    features.append(("restored, ILM + FLM", with_flm.feature_restored))
    figure, grid = _grid(["input"] + [title for title, _ in features], _example_labels(with_flm))
    for k, row in enumerate(grid):
        low = with_flm.feature_input[k].min(axis=(0, 1))             # (3,)
        span = with_flm.feature_input[k].max(axis=(0, 1)) - low       # (3,)
        span = np.where(span > 0, span, 1.0)
        row[0].imshow(with_flm.example_images[k])
        for axes, (_, projected) in zip(row[1:], features):
            axes.imshow(np.clip((projected[k] - low) / span, 0.0, 1.0), interpolation="nearest")
    figure.suptitle(f"{with_flm.category}: level-1 features, first 3 principal components as RGB")
    _save(figure, path)


def figure_lambda_sweep(ratios: list[float], rows: list[dict], path: Path) -> None:
    """Fig. 11: the four metrics in percent against the FLM masking ratio lambda.

    rows[i] holds the metrics (fractions, as numbers or CSV strings) of the run with
    ratio ratios[i], e.g. its mean row. The authors' per-image AU-PRO is dashed, as it
    is not the standard metric.
    """
    if len(ratios) != len(rows) or not ratios:
        raise ValueError(f"need one row per ratio, got {len(ratios)} ratios and {len(rows)} rows.")
    order = np.argsort(ratios)
    lambdas = np.asarray(ratios, dtype=np.float64)[order]
    figure = _figure(7.2, 4.0)
    axes = figure.add_subplot()
    for name in METRICS:
        percents = [100 * float(rows[i][name]) for i in order]
        axes.plot(lambdas, percents, marker="o", linestyle="--" if name == "aupro_per_image" else "-",
                  label=name)
    axes.set_xticks(lambdas)
    axes.set_xlabel("lambda (FLM masking ratio)")
    axes.set_ylabel("%")
    axes.set_title("Influence of the masking ratio lambda")
    axes.grid(alpha=0.3)
    figure.legend(loc="outside right upper")  # beside the axes: the curves fill the plot
    _save(figure, path)


def draw_category(pred_path: Path, out_dir: Path) -> list[Path]:
    """Fig. 6, Fig. 7, the ROC curves and Fig. 9 (this run's features only) of one category.

    Writes out_dir/<category>_{scores,examples,roc,features}.png and returns the paths.
    """
    pred = Predictions.load(Path(pred_path))
    figures = {
        "scores": figure_score_density,
        "examples": figure_examples,
        "roc": figure_roc,
        "features": lambda pred, path: figure_features(pred, None, path),
    }
    paths = []
    for suffix, draw in figures.items():
        paths.append(Path(out_dir) / f"{pred.category}_{suffix}.png")
        draw(pred, paths[-1])
    return paths


def draw_run(results_dir: Path) -> list[Path]:
    """draw_category for every category of a run, into results_dir/figures/."""
    results_dir = Path(results_dir)
    return [path for pred_path in sorted((results_dir / "predictions").glob("*.npz"))
            for path in draw_category(pred_path, results_dir / "figures")]


def _check_same_inputs(with_flm: Predictions, without_flm: Predictions) -> None:
    """Raise ValueError unless both runs hold the same examples and the same projected input features.

    The input features come from the frozen teacher, so they agree up to numerical noise;
    a larger difference (another backbone, or a component whose sign flipped) would give
    the two restored columns different colours for the same feature.
    """
    if (with_flm.category != without_flm.category
            or not np.array_equal(with_flm.example_index, without_flm.example_index)):
        raise ValueError(
            f"figure_features compares the same test images of both runs, but the runs hold "
            f"{with_flm.category} images {with_flm.example_index.tolist()} (with FLM) and "
            f"{without_flm.category} images {without_flm.example_index.tolist()} (without FLM).")
    reference = with_flm.feature_input
    tolerance = 0.05 * float(reference.std())  # well above float16 noise, well below a change of basis
    if not np.allclose(reference, without_flm.feature_input, rtol=0.0, atol=tolerance):
        raise ValueError("figure_features needs both runs' input features projected on one PCA basis, but "
                         "their feature_input differ (another backbone or image size?).")


def _pixels(features: np.ndarray) -> np.ndarray:
    """(k, C, h, w) features as a (k*h*w, C) float64 matrix, one row per pixel."""
    return np.moveaxis(features, 1, -1).reshape(-1, features.shape[1]).astype(np.float64)


def _example_labels(pred: Predictions) -> list[str]:
    """A row label per example: its defect type and index in the test set."""
    return [f"{pred.defects[index]}\n(test image {index})" for index in pred.example_index]


def _figure(width: float, height: float) -> Figure:
    """An empty figure of that size in inches, laid out by matplotlib's constrained layout."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _colour_bar(figure: Figure, heat, axes) -> None:
    """The bar of an overlay's colour map beside `axes`: the map itself, not its half-transparent overlay."""
    from matplotlib.cm import ScalarMappable
    figure.colorbar(ScalarMappable(heat.norm, heat.cmap), ax=axes, label="anomaly score")


def _grid(titles: list[str] | tuple[str, ...], row_labels: list[str]) -> tuple[Figure, np.ndarray]:
    """A figure of image panels without ticks, a column per title and a row per label."""
    n_rows, n_columns = len(row_labels), len(titles)
    figure = _figure(n_columns * PANEL_INCHES + 0.9, n_rows * PANEL_INCHES + 0.5)
    grid = figure.subplots(n_rows, n_columns, squeeze=False)  # (n_rows, n_columns) of Axes
    for axes in grid.ravel():
        axes.set_xticks([])
        axes.set_yticks([])
    for axes, title in zip(grid[0], titles):
        axes.set_title(title)
    for axes, label in zip(grid[:, 0], row_labels):
        axes.set_ylabel(label)
    return figure, grid


def _save(figure: Figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        figure.savefig(file, dpi=DPI, format=path.suffix.lstrip("."))  # a file object has no suffix to go by
