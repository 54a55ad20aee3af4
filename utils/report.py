"""Per-category lines and the results table beside the paper's numbers (printed, CSV, Markdown)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from utils.files import write_atomically
from utils.metrics import METRICS

# Which of our metrics each of the paper's three numbers is comparable with
# (the paper's AU-PRO was computed per image by the authors' code).
PAPER_COLUMNS = ("image_auroc", "pixel_auroc", "aupro_per_image")


def percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def score(value: float | None) -> str:
    """An image score (the decision threshold) on the method's own scale, 4 significant digits."""
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"


def category_line(category: str, metrics: dict[str, float]) -> str:
    """One line per category: the four metrics in percent, one decimal, and the threshold if chosen."""
    line = f"{category:<12} " + "  ".join(f"{name} {percent(metrics.get(name))}" for name in METRICS)
    return line + (f"  threshold {score(metrics['threshold'])}" if "threshold" in metrics else "")


def with_mean(rows: list[dict]) -> list[dict]:
    """The rows and a 'mean' row over the categories where a metric is defined."""
    mean = {"category": "mean", "status": ""}
    for name in METRICS:
        values = [row[name] for row in rows if not math.isnan(row.get(name, math.nan))]
        mean[name] = sum(values) / len(values) if values else math.nan
    return rows + [mean]


def table(rows: list[dict], paper: dict[str, tuple] | None, mean: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and cells: each metric, then the paper's number and our difference where it reports one.

    mean=True: the rows are categories, with their decision thresholds, and the mean row is added.
    """
    header = ["category" if mean else "configuration"]
    for name in METRICS:
        header.append(name)
        if paper is not None and name in PAPER_COLUMNS:
            header += ["paper", "diff"]
    header += ["threshold", "status"] if mean else ["status"]
    cells = []
    for row in with_mean(rows) if mean else rows:
        reported = (paper or {}).get(row["category"], (None, None, None))
        line = [row["category"]]
        for name in METRICS:
            ours = row.get(name, math.nan)
            line.append(percent(ours))
            if paper is not None and name in PAPER_COLUMNS:
                theirs = reported[PAPER_COLUMNS.index(name)]
                line.append("-" if theirs is None else f"{theirs:.1f}")
                missing = theirs is None or math.isnan(ours)
                line.append("-" if missing else f"{100 * ours - theirs:+.1f}")
        if mean:
            line.append(score(row.get("threshold")))
        line.append(row.get("status", ""))
        cells.append(line)
    return header, cells


def markdown(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines) + "\n"


def write_tables(folder: Path, name: str, rows: list[dict], paper: dict[str, tuple] | None,
                 note: str = "", mean: bool = True) -> str:
    """Write <folder>/<name>.csv (fractions, full precision) and <name>.md; return the Markdown.

    mean=True: the rows are categories; adds their mean and the column of their decision
    thresholds (utils.metrics.f1_threshold). Experiment tables, whose rows are
    configurations, have neither.
    """
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["category", *METRICS, *(["threshold"] if mean else []), "status"]
    write_csv(folder / f"{name}.csv", columns, with_mean(rows) if mean else rows)
    text = markdown(*table(rows, paper, mean))
    if note:
        text += "\n" + note + "\n"
    write_atomically(folder / f"{name}.md", text)
    return text


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """The rows as CSV with these columns (a missing value empty, other keys left out), written atomically."""
    spreadsheet = io.StringIO(newline="")
    writer = csv.DictWriter(spreadsheet, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, spreadsheet.getvalue())
