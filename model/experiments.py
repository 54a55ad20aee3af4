"""The paper's experiments (Sec. 4): each row of a preset (utils/presets.py) as a run of its own, then the
preset's table beside the paper's rows, and the figures drawn across rows (Fig. 9, Fig. 11)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from dataset import DATASET_CATEGORIES
from model.settings import Settings, Training
from utils.figures import figure_features, figure_lambda_sweep
from utils.paper import PAPER
from utils.predictions import Predictions
from utils.presets import PRESETS, Preset, slug
from utils.ranks import Ranks
from utils.report import with_mean, write_tables
from utils.runs import RunFolders

# main.py's run_categories: (settings, folders, check_data) -> the rows of the categories.
RunCategories = Callable[[Settings, RunFolders, bool], list[dict[str, Any]]]


def run_experiment(name: str, rows: list[Settings], folders: RunFolders,
                   run_categories: RunCategories) -> list[dict[str, Any]]:
    """Each row of the preset `name` (its settings in `rows`) as a run of its own in results/<run>/<row>/,
    then the preset's table in results/<run>/<name>.md and .csv.

    Rows with equal Training evaluate the checkpoints of the first row trained like them
    instead of training again (Table 7).
    """
    preset = PRESETS[name]
    trained: dict[Training, RunFolders] = {}  # -> the folders holding its checkpoints
    checked: set[tuple[str, str]] = set()  # (dataset, data_dir) whose files were decoded
    table_rows = []
    for row, settings in zip(preset.rows, rows):
        shared = settings.training in trained
        if shared:
            settings = replace(settings, mode=replace(settings.mode, eval_only=True, resume=False, overwrite=False))
        row_folders = RunFolders.of(str(folders.results), str(folders.checkpoints), slug(row.label))
        row_folders = replace(row_folders, checkpoints=trained.setdefault(settings.training, row_folders).checkpoints)
        data = (settings.training.dataset, settings.run.data_dir)
        print(f"\n{preset.title}: {row.label}")
        categories = run_categories(settings, row_folders, data not in checked)
        checked.add(data)
        failed = any(category["status"] == "diverged" for category in categories)
        table_rows.append({**with_mean(categories)[-1], "category": row.label, "status": "diverged" if failed else "ok"})
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
        print("\n" + write_tables(folders.results, name, table_rows, paper, note, mean=False))
        draw_experiment(preset, table_rows, folders)
    return table_rows


def draw_experiment(preset: Preset, rows: list[dict[str, Any]], folders: RunFolders) -> None:
    """Fig. 9 across two rows (features restored without and with FLM) and Fig. 11 (a lambda sweep)."""
    results = folders.results
    if preset.features is not None:
        with_flm, without_flm = (results / slug(label) / "predictions" for label in preset.features)
        for path in sorted(with_flm.glob("*.npz")):
            if (without_flm / path.name).exists():
                figure_features(Predictions.load(path), Predictions.load(without_flm / path.name),
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
