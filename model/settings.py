"""main.py's constants resolved into four frozen bundles, each field in exactly one, each checking its ranges.

- Training: what shapes the trained weights. Experiment rows with equal Training share one
  training; a checkpoint is refused by a command asking for other Training (but the fields
  each declares may differ for that use).
- Scoring: what shapes the maps and scores of a trained model.
- Run: where a run reads and writes, and what it runs.
- Machine: how this machine runs it; never changes a number.
- Mode: what this command does with the run; never recorded.

config.json holds the record of Training, Scoring, Run and Machine and the FORMAT it was
written in; a checkpoint holds Training's. utils/config.py says how a run written by an
earlier version reads back.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from dataset import DATASET_CATEGORIES
from dataset.images import SYNTHESES
from dataset.nsa import MODES as NSA_MODES
from model.methods import BOTTLENECKS, IMAGE_SCORES, OBJECTIVES
from model.teacher import check_backbone
from utils.config import FORMAT, Bundle, check, setting
from utils.errors import InputError
from utils.metrics import THRESHOLD_RULES
from utils.presets import PRESETS
from utils.runs import RunFolders, check_run_name


@dataclass(frozen=True)
class Training(Bundle):
    """What shapes the trained weights (Sec. 4.1, Tables 5, 6, 8 and the RD family's switches)."""

    dataset: str
    image_size: int
    loss: str = setting(since="mrkd")
    backbone: str
    weights: str | None
    ilm: bool
    flm: bool
    flm_ratio: float
    alpha: float
    synthesis: str = setting(since="nsa")
    nsa_mode: str = setting(since="swap")
    bottleneck: str = setting(since="ocbe")
    projection: bool = setting(since=False)
    epochs: int = setting(may_differ=("resume", "evaluate"))
    batch_size: int = setting(may_differ=("predict",))
    learning_rate: float
    projection_learning_rate: float = setting(since=0.001)
    accumulate: int = setting(since=1)
    betas: tuple[float, ...]
    weight_decay: float = setting(since=0.0)
    seed: int
    fast: bool = setting(may_differ=("evaluate", "predict"))
    threshold: str = setting(since="f1_test")  # its normal rules hold training images out (THRESHOLD_RULES)

    def __post_init__(self) -> None:
        check([
            (self.dataset in DATASET_CATEGORIES, f"DATASET must be one of {', '.join(DATASET_CATEGORIES)}"),
            (self.image_size >= 32 and self.image_size % 32 == 0, "IMAGE_SIZE must be a multiple of 32"),
            (self.loss in OBJECTIVES, f"LOSS must be one of {', '.join(OBJECTIVES)}"),
            (self.loss != "drd" or self.ilm, "LOSS=drd trains on pseudo-abnormal images: it needs ILM=True"),
            (self.loss != "rdpp" or (self.ilm and self.projection),
             "LOSS=rdpp trains a projection on noisy images: it needs ILM=True and PROJECTION=True"),
            (0 <= self.flm_ratio < 1, "FLM_RATIO (lambda) must lie in [0, 1)"),
            (0 <= self.alpha <= 1, "ALPHA must lie in [0, 1]"),
            (self.synthesis in SYNTHESES, f"SYNTHESIS must be one of {', '.join(SYNTHESES)}"),
            (self.nsa_mode in NSA_MODES, f"NSA_MODE must be one of {', '.join(NSA_MODES)}"),
            (self.bottleneck in BOTTLENECKS, f"BOTTLENECK must be one of {', '.join(BOTTLENECKS)}"),
            (self.epochs >= 1, "EPOCHS must be at least 1"),
            (self.batch_size >= 1, "BATCH_SIZE must be at least 1"),
            (self.learning_rate > 0 and self.projection_learning_rate > 0 and self.weight_decay >= 0,
             "LEARNING_RATE and PROJECTION_LEARNING_RATE must be positive, WEIGHT_DECAY at least 0"),
            (self.accumulate >= 1, "ACCUMULATE must be at least 1"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "BETAS must be two numbers in [0, 1)"),
            (0 <= self.seed < 2**32, "SEED must be an integer in [0, 2^32)"),
            (self.threshold in THRESHOLD_RULES, f"THRESHOLD must be one of {', '.join(THRESHOLD_RULES)}"),
        ])
        check_backbone(self.backbone)

    def check_batches(self, images: int, category: str) -> None:
        """Refuse batches that batch norm cannot train on: at IMAGE_SIZE=32 the bottleneck's last
        stage has 1 x 1 features, and one image in a batch gives it a single value per channel."""
        if self.image_size < 64 and (self.batch_size == 1 or images % self.batch_size == 1):
            raise InputError(f"At IMAGE_SIZE={self.image_size} batch norm cannot train on a batch of one image, "
                             f"which {images} training images of {category} in batches of {self.batch_size} "
                             f"give; choose another BATCH_SIZE or an IMAGE_SIZE of 64 or more.")


@dataclass(frozen=True)
class Scoring(Bundle):
    """How maps and image scores are computed at test time (Sec. 3.4, Eq. (5)-(6))."""

    score_levels: tuple[int, ...]  # Eq. (5); Table 7
    sigma: float                   # Gaussian smoothing
    eval_masks: int = setting(since=1)           # K FLM masks averaged
    image_score: str = setting(since="max")      # a key of IMAGE_SCORES

    def __post_init__(self) -> None:
        check([
            (len(self.score_levels) > 0 and set(self.score_levels) <= {1, 2, 3},
             "SCORE_LEVELS must be a non-empty subset of 1,2,3"),
            (self.sigma >= 0, "SIGMA must be at least 0"),
            (self.eval_masks >= 1, "EVAL_MASKS must be at least 1"),
            (self.image_score in IMAGE_SCORES, f"IMAGE_SCORE must be one of {', '.join(IMAGE_SCORES)}"),
        ])


# Which checkpoint a run reports: the one after the last epoch (the fair protocol), or the best of the
# evaluations on the test set every EVAL_EVERY epochs, as the RD++ and DRD releases pick theirs.
SELECTIONS = ("last", "best_on_test")


@dataclass(frozen=True)
class Run(Bundle):
    """Where a run reads and writes, and what it runs."""

    run_name: str
    method: str
    experiment: str
    demo: bool
    data_dir: str
    categories: tuple[str, ...]
    results_dir: str
    checkpoint_dir: str
    checkpoint_every: int
    eval_every: int
    figures: bool
    seeds: tuple[int, ...] = setting(since=())        # each category once per seed; empty: SEED alone
    select: str = setting(since="last")               # SELECTIONS
    category_epochs: str = setting(since="")          # "" or "rdpp" (utils/paper.py: RDPP_EPOCHS)

    def __post_init__(self) -> None:
        check([
            (self.experiment in ("", *PRESETS), f"EXPERIMENT must be one of {', '.join(PRESETS)}"),
            (self.checkpoint_every >= 1, "CHECKPOINT_EVERY must be at least 1"),
            (self.eval_every >= 0, "EVAL_EVERY must be at least 0"),
            (all(0 <= seed < 2**32 for seed in self.seeds) and len(set(self.seeds)) == len(self.seeds),
             "SEEDS must be distinct integers in [0, 2^32)"),
            (self.select in SELECTIONS, f"SELECT must be one of {', '.join(SELECTIONS)}"),
            (self.select != "best_on_test" or self.eval_every >= 1,
             "SELECT=best_on_test picks among evaluations every EVAL_EVERY epochs: set EVAL_EVERY"),
            (self.category_epochs in ("", "rdpp"), "CATEGORY_EPOCHS must be empty or rdpp"),
        ])
        check_run_name(self.run_name)

    def folders(self) -> RunFolders:
        return RunFolders.of(self.results_dir, self.checkpoint_dir, self.run_name)


@dataclass(frozen=True)
class Machine(Bundle):
    """How this machine runs the work; no number depends on it."""

    device: str
    workers: int
    compile: bool

    def __post_init__(self) -> None:
        check([(self.workers >= 0, "WORKERS must be at least 0")])


@dataclass(frozen=True)
class Mode(Bundle):
    """What this command does with the run: train a new run (no mode set), or one of the others."""

    resume: bool
    eval_only: bool
    predict: str
    export: bool
    overwrite: bool
    partial: bool

    def __post_init__(self) -> None:
        chosen = [f"--{name}" for name in ("resume", "eval_only", "predict", "export") if getattr(self, name)]
        check([
            (len(chosen) <= 1, f"{' and '.join(chosen)} exclude each other; give one"),
            (not (self.overwrite and chosen), f"--overwrite replaces a run by a new training; it does not go "
                                              f"with {chosen[0] if chosen else ''}"),
            (not self.partial or self.eval_only or self.predict,
             "--partial=True applies to --eval_only or --predict (an export needs a finished training)"),
        ])

    @property
    def use(self) -> str | None:
        """What the command does with existing checkpoints (utils/config.py: USES), None for a new training."""
        if self.resume:
            return "resume"
        return "evaluate" if self.eval_only else "predict" if self.predict or self.export else None


BUNDLES = (Training, Scoring, Run, Machine, Mode)
RECORDED = (Training, Scoring, Run, Machine)  # Mode is the command, not the run


@dataclass(frozen=True)
class Settings:
    training: Training
    scoring: Scoring
    run: Run
    machine: Machine
    mode: Mode

    def __post_init__(self) -> None:
        check([(self.run.select == "last" or not (self.mode.resume or self.mode.eval_only),
                "SELECT=best_on_test picks among the evaluations of one whole training: it does not go with "
                "--resume or --eval_only")])

    @classmethod
    def from_constants(cls, constants: dict[str, Any]) -> Settings:
        return cls(*(bundle.from_constants(constants) for bundle in BUNDLES))

    def replace_for_export(self) -> Settings:
        """These settings on the CPU, in fp32 and uncompiled: how a model is exported."""
        return replace(self, training=replace(self.training, fast=False),
                       machine=replace(self.machine, device="cpu", compile=False))

    def seeded(self, seed: int) -> Settings:
        """This run's settings for one of its SEEDS."""
        return replace(self, training=replace(self.training, seed=seed))

    def record(self) -> dict[str, Any]:
        """config.json: the recorded bundles and the format they were written in."""
        return {"FORMAT": FORMAT, **{k: v for part in (self.training, self.scoring, self.run, self.machine)
                                     for k, v in part.record().items()}}


def resolve(constants: dict[str, Any], demo: dict[str, Any], methods: dict[str, dict[str, Any]],
            datasets: dict[str, dict[str, Any]], overrides: dict[str, Any], row: dict[str, Any] | None = None
            ) -> Settings:
    """main.py's constants, then `demo` (with --demo), the METHOD's, the DATASET's, the command line's
    overrides, and last an experiment row's (so a row is what its table says)."""
    row = row or {}
    method = {**constants, **overrides, **row}["METHOD"]
    check([(method in methods, f"METHOD must be one of {', '.join(methods)}")])
    demo = demo if {**constants, **overrides}["DEMO"] else {}
    dataset = {**constants, **demo, **methods[method], **overrides, **row}["DATASET"]
    if demo and dataset != demo["DATASET"]:  # the demo data of another dataset's layout, in a folder of its own
        demo = {**demo, "DATA_DIR": f"{demo['DATA_DIR']}_{dataset}"}
    resolved = {**constants, **demo, **methods[method], **datasets.get(dataset, {}), **overrides, **row}
    if resolved["EXPERIMENT"] and "RUN_NAME" not in overrides:
        resolved["RUN_NAME"] = resolved["EXPERIMENT"]  # results/<preset>/ unless named
    return Settings.from_constants(resolved)


# What --predict takes from the command line; every other setting is the run's own.
PREDICT_OPTIONS = ({f.name.upper() for bundle in (Machine, Mode) for f in fields(bundle)}
                   | {"RUN_NAME", "RESULTS_DIR", "CHECKPOINT_DIR", "CATEGORIES"}
                   | {f.name.upper() for f in fields(Training) if "predict" in f.metadata.get("may_differ", ())})


def recorded(constants: dict[str, Any], overrides: dict[str, Any]) -> Settings:
    """The settings of a trained run, for --predict and --export: its config.json, read as the format
    it was written in, then the command line's PREDICT_OPTIONS (any other option is refused)."""
    refused = [f"--{name.lower()}" for name in overrides if name not in PREDICT_OPTIONS]
    if refused:
        what = "--predict scores" if overrides.get("PREDICT") else "--export exports"
        raise InputError(f"{what} with the settings the run was trained and evaluated with; leave out "
                         f"{', '.join(refused)}.")
    where = {**constants, **overrides}
    folders = Settings.from_constants(where).run.folders()  # the command line's values checked first
    saved = folders.config()
    path = folders.results / "config.json"
    if saved is None:
        raise InputError(f"No trained run {where['RUN_NAME']!r}: {path} does not exist; "
                         f"train it first, or give the --run_name and --results_dir it was trained with.")
    if saved.get("FORMAT", 1) > FORMAT:
        raise InputError(f"{path} was written by a newer version of this project (format {saved['FORMAT']}); "
                         f"update the code to score with it.")
    # The run's own bundles, each as recorded, then the command line's choices of this machine and command.
    own = {k: v for part in RECORDED for k, v in part.from_record(saved, str(path)).record().items()}
    return Settings.from_constants({**constants, **own, "CATEGORIES": (), **overrides})


