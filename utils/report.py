"""Per-category lines and the results table beside the paper's numbers (printed, CSV, Markdown)."""
from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

from utils.files import write_atomically
from utils.metrics import METRICS, MVTEC_AD_2_METRICS, RULE_LABELS, THRESHOLD_RULES
# Which of our metrics each of the paper's three numbers is comparable with
# (the paper's AU-PRO was computed per image by the authors' code).
PAPER_COLUMNS = ("image_auroc", "pixel_auroc", "aupro_per_image")
# What each decision rule that was computed costs on the test set, and MVTec AD 2's own metrics:
# columns of metrics.csv where a row has them; the Markdown table shows F1 at each threshold and
# the benchmark's metrics.
DECISION_COLUMNS = tuple(f"{kind}_{rule}" for rule in THRESHOLD_RULES for kind in ("threshold", "f1", "precision",
                                                                                   "recall"))
SHOWN_COLUMNS = tuple(f"f1_{rule}" for rule in THRESHOLD_RULES) + MVTEC_AD_2_METRICS


def percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def score(value: float | None) -> str:
    """An image score (the decision threshold) on the method's own scale, 4 significant digits."""
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"


def category_line(category: str, metrics: dict[str, float]) -> str:
    """One line per category: the four metrics in percent, one decimal, and the threshold if chosen."""
    line = f"{category:<12} " + "  ".join(f"{name} {percent(metrics.get(name))}" for name in METRICS)
    return line + (f"  threshold {score(metrics['threshold'])}" if "threshold" in metrics else "")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value); NaN when any value is."""
    if not values or any(math.isnan(value) for value in values):
        return math.nan, math.nan
    mean = sum(values) / len(values)
    spread = sum((value - mean) ** 2 for value in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(spread)


def over_seeds(rows: list[dict]) -> list[dict]:
    """One row per category from its rows of several seeds (each with a "seed"), in the order
    categories first appear: each metric's mean over the seeds, `<metric>_std` its sample
    standard deviation, and `<metric>_seeds` the values in seed order (for the mean row)."""
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    merged = []
    for category, runs in by_category.items():
        runs = sorted(runs, key=lambda row: row["seed"])
        row = {"category": category, "seeds": ",".join(str(run["seed"]) for run in runs),
               "status": "; ".join(dict.fromkeys(run["status"] for run in runs)),
               "protocol": runs[0].get("protocol", "")}
        for name in METRICS:
            row[f"{name}_seeds"] = [run.get(name, math.nan) for run in runs]
            row[name], row[f"{name}_std"] = mean_std(row[f"{name}_seeds"])
        merged.append(row)
    return merged


def with_mean(rows: list[dict]) -> list[dict]:
    """The rows and a 'mean' row over the categories where a metric is defined.

    Rows of several seeds (over_seeds) give the mean row's spread over seeds: the mean over
    categories is taken for each seed, then their mean and standard deviation. Rows of
    different protocols (a result selected on the test set beside a fair one) are never
    averaged together.
    """
    protocols = {row.get("protocol", "") for row in rows}
    mean = {"category": "mean", "status": "", "protocol": next(iter(protocols)) if len(protocols) == 1 else ""}
    if len(protocols) > 1:
        return rows + [{**mean, **dict.fromkeys(METRICS, math.nan),
                        "status": "not averaged: rows of different protocols"}]
    for name in METRICS:
        defined = [row for row in rows if not math.isnan(row.get(name, math.nan))]
        if defined and all(f"{name}_seeds" in row for row in defined):
            per_seed = [sum(seeds) / len(seeds) for seeds in zip(*(row[f"{name}_seeds"] for row in defined))]
            mean[f"{name}_seeds"] = per_seed
            mean[name], mean[f"{name}_std"] = mean_std(per_seed)
        else:
            mean[name] = sum(row[name] for row in defined) / len(defined) if defined else math.nan
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
    shown = [name for name in SHOWN_COLUMNS if any(name in row for row in rows)]
    header += shown
    header += ["threshold", "status"] if mean else ["status"]
    cells = []
    for row in with_mean(rows) if mean else rows:
        reported = (paper or {}).get(row["category"], (None, None, None))
        line = [row["category"]]
        for name in METRICS:
            ours = row.get(name, math.nan)
            spread = row.get(f"{name}_std")
            line.append(percent(ours) + (f" ± {percent(spread)}" if spread is not None else ""))
            if paper is not None and name in PAPER_COLUMNS:
                theirs = reported[PAPER_COLUMNS.index(name)]
                line.append("-" if theirs is None else f"{theirs:.1f}")
                missing = theirs is None or math.isnan(ours)
                line.append("-" if missing else f"{100 * ours - theirs:+.1f}")
        line += [percent(row.get(name)) for name in shown]
        if mean:
            line.append(score(row.get("threshold")))
        line.append("; ".join(part for part in (row.get("status", ""), row.get("protocol", "")) if part))
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
    spread = any(f"{METRICS[0]}_std" in row for row in rows)
    extra = [name for name in ("threshold_rule", *DECISION_COLUMNS, *MVTEC_AD_2_METRICS) if any(name in row for row in rows)]
    columns = ["category", *METRICS, *([f"{metric}_std" for metric in METRICS] + ["seeds"] if spread else []),
               *(["threshold"] if mean else []), *extra, "status",
               *(["protocol"] if any(row.get("protocol") for row in rows) else [])]
    write_csv(folder / f"{name}.csv", columns, with_mean(rows) if mean else rows)
    text = markdown(*table(rows, paper, mean))
    rules = dict.fromkeys(row["threshold_rule"] for row in rows if "threshold_rule" in row)
    if mean and rules:
        note = " ".join([f"Decision threshold {', '.join(RULE_LABELS[rule] for rule in rules)}.", note]).strip()
    if note:
        text += "\n" + note + "\n"
    write_atomically(folder / f"{name}.md", text)
    return text


def write_run_tables(folder: Path, rows: list[dict], paper: dict[str, tuple] | None, seeds: bool) -> str:
    """A run's metrics.csv and metrics.md; with SEEDS (seeds=True) first metrics_per_seed, a row per
    (category, seed), then the categories' mean and spread over their seeds. Returns the Markdown."""
    if seeds:
        write_tables(folder, "metrics_per_seed", [{**row, "category": f"{row['category']} seed {row['seed']}"}
                                                  for row in rows], None, mean=False)
        rows = over_seeds(rows)
    return write_tables(folder, "metrics", rows, paper)


def exit_status(rows: list[dict]) -> int:
    """main.py's exit status: 1 when no category was evaluated or one diverged, else 0."""
    if not any(row["status"].startswith(("ok", "partial")) for row in rows):
        print("error: no category was evaluated (see the lines above).", file=sys.stderr)
        return 1
    return 1 if any(row["status"] == "diverged" for row in rows) else 0


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """The rows as CSV with these columns (a missing value empty, other keys left out), written atomically."""
    spreadsheet = io.StringIO(newline="")
    writer = csv.DictWriter(spreadsheet, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, spreadsheet.getvalue())
