"""What a training run is asked to do (`TrainConfig`, stored as config.json) and what it returns."""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from toolkit.bases import DEFAULT_BASE, get_base
from toolkit.bases.spec import REGISTRY
from toolkit.calibration import ScoreCalibration
from toolkit.data import SplitOptions
from toolkit.errors import DatasetError, ModelError
from toolkit.hardware import BasePrecision, Strategy
from toolkit.model import Head
from toolkit.operating_point import Decision, parse_operating_point

METRIC_NAMES = ("loss", "accuracy", "auc", "precision", "recall")  # what fit logs, each also as val_*


class Monitor(StrEnum):
    """The metric that picks the best epoch."""

    val_loss = "val_loss"
    val_accuracy = "val_accuracy"
    val_auc = "val_auc"
    val_precision = "val_precision"
    val_recall = "val_recall"
    loss = "loss"
    accuracy = "accuracy"


class ClassWeight(StrEnum):
    """How classes weigh in the loss: balanced (each class as much as the others), none, or auto.

    auto: balanced for more than two classes, none for two. With K classes the
    prediction is the argmax, and on uneven data an unweighted head never predicts
    the small ones (ELPV grades: recall 1.4% and 0%); with two, the operating point
    (--operating-point) trades the two errors, and weights would only move the 0.5
    threshold at the cost of accuracy (ELPV binary: 84.6% -> 82.0%, benchmarks/DEFAULTS.md).
    """

    auto = "auto"
    balanced = "balanced"
    none = "none"


class Schedule(StrEnum):
    """The fine-tuning learning rate over its epochs."""

    constant = "constant"
    cosine = "cosine"


def _choices(enum: type[StrEnum]) -> str:
    return ", ".join(enum)


@dataclasses.dataclass
class DataConfig:
    """Which images, how they are split and augmented."""

    folder: str = ""  # DATA_DIR
    val_split: float = SplitOptions.val_split
    test_split: float = SplitOptions.test_split  # flat folders only: the held-out test share
    validate_on_test: bool = SplitOptions.validate_on_test  # train/ + test/: validate on test/ as the tutorial does
    groups: str | None = SplitOptions.groups  # CSV path,group: a group never spans two carved splits
    group_pattern: str | None = SplitOptions.group_pattern  # or a regex on the path under DATA_DIR
    augment: bool | None = None  # None: auto, off for registered images (toolkit.data.registration)
    aug_views: int = 0
    cache_dir: str | None = None


@dataclasses.dataclass
class BaseConfig:
    """The frozen network: which one, at what size, with which weights, and how its passes are computed."""

    name: str = DEFAULT_BASE  # a name in toolkit.bases (test-only bases too, through the library)
    image_size: int | None = None  # None: the base's own default size (224 for every public base)
    weights: str = "imagenet"
    allow_random_weights: bool = False
    cache_features: bool = True
    precision: BasePrecision = BasePrecision.auto  # --base-precision


@dataclasses.dataclass
class HeadConfig:
    kind: Head = Head.mlp  # benchmarks/DEFAULTS.md: ahead of gap+gmp on the demo and the ELPV grades
    dropout: float = 0.5  # the mlp head's second dropout (its first is half), as fastai's
    normalize: bool = True  # --feature-norm: standardise the head's inputs with training statistics (model.build_head)


@dataclasses.dataclass
class OptimConfig:
    """The frozen phase's optimisation and how its best epoch is chosen."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (0: plain Adam)
    label_smoothing: float = 0.0
    class_weight: ClassWeight = ClassWeight.auto
    # val_loss: a few dozen validation images make accuracy jump between epochs, and the first epoch
    # reaching a spike was chosen (demo: test 4 points below the validation it was chosen on; DEFAULTS.md)
    monitor: Monitor = Monitor.val_loss
    patience: int = 0
    seed: int = 0


@dataclasses.dataclass
class FineTuneConfig:
    epochs: int = 0
    lr: float | None = None  # default: the frozen phase's lr / 10
    schedule: Schedule = Schedule.constant  # or cosine: per epoch, from lr down to 0
    cut: str | None = None  # --fine-tune-from: a cut of the base (None: its first); cached: trained on its output


@dataclasses.dataclass
class DecisionConfig:
    positive_class: str | None = None  # two classes: the finding (default: the label that sorts second)
    operating_point: str | None = None  # "sensitivity=0.95", "specificity=0.9" or "threshold=0.3"
    # temperature: fitted on validation after training and folded into the last layer (toolkit.calibration)
    score_calibration: ScoreCalibration = ScoreCalibration.temperature
    tta: bool = False  # --tta: the saved model averages four flipped views of each image (toolkit.tta)


# The command line's (and config.json's) flat names -> (group, field): one table, read both ways.
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "data_dir": ("data", "folder"),
    "val_split": ("data", "val_split"),
    "test_split": ("data", "test_split"),
    "validate_on_test": ("data", "validate_on_test"),
    "groups": ("data", "groups"),
    "group_pattern": ("data", "group_pattern"),
    "augment": ("data", "augment"),
    "aug_views": ("data", "aug_views"),
    "cache_dir": ("data", "cache_dir"),
    "base": ("base", "name"),
    "image_size": ("base", "image_size"),
    "weights": ("base", "weights"),
    "allow_random_weights": ("base", "allow_random_weights"),
    "cache_features": ("base", "cache_features"),
    "precision": ("base", "precision"),
    "head": ("head", "kind"),
    "dropout": ("head", "dropout"),
    "feature_norm": ("head", "normalize"),
    "epochs": ("optim", "epochs"),
    "batch_size": ("optim", "batch_size"),
    "lr": ("optim", "lr"),
    "weight_decay": ("optim", "weight_decay"),
    "label_smoothing": ("optim", "label_smoothing"),
    "class_weight": ("optim", "class_weight"),
    "monitor": ("optim", "monitor"),
    "patience": ("optim", "patience"),
    "seed": ("optim", "seed"),
    "fine_tune_epochs": ("fine_tune", "epochs"),
    "fine_tune_lr": ("fine_tune", "lr"),
    "fine_tune_schedule": ("fine_tune", "schedule"),
    "fine_tune_from": ("fine_tune", "cut"),
    "positive_class": ("decision", "positive_class"),
    "operating_point": ("decision", "operating_point"),
    "score_calibration": ("decision", "score_calibration"),
    "tta": ("decision", "tta"),
}
RUN_FIELDS = ("out", "strategy")  # how and where the run goes, outside the groups


@dataclasses.dataclass
class TrainConfig:
    """What `toolkit train` is asked to do, grouped by concern: the only home of its defaults.

    The CLI and config.json use the flat names of FLAT_NAMES (`TrainConfig.from_flat`,
    `to_flat`), so run folders written before the grouping load unchanged.
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    base: BaseConfig = dataclasses.field(default_factory=BaseConfig)
    head: HeadConfig = dataclasses.field(default_factory=HeadConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    fine_tune: FineTuneConfig = dataclasses.field(default_factory=FineTuneConfig)
    decision: DecisionConfig = dataclasses.field(default_factory=DecisionConfig)
    out: str = ""
    strategy: Strategy = Strategy.default

    def __post_init__(self) -> None:
        """None means the base's own: its default image size and its first fine-tuning cut (config.json stores them)."""
        spec = REGISTRY.get(self.base.name)
        if spec is not None:
            self.base.image_size = spec.default_size if self.base.image_size is None else self.base.image_size
            self.fine_tune.cut = spec.default_cut if self.fine_tune.cut is None else self.fine_tune.cut

    @classmethod
    def from_flat(cls, **flat) -> TrainConfig:
        """A config from the flat names (the CLI's options, config.json); an unknown name is a TypeError."""
        unknown = sorted(set(flat) - set(FLAT_NAMES) - set(RUN_FIELDS))
        if unknown:
            raise TypeError(f"unknown TrainConfig setting(s): {', '.join(unknown)}")
        groups: dict[str, dict] = {}
        for name, value in flat.items():
            if name in FLAT_NAMES:
                group, field = FLAT_NAMES[name]
                groups.setdefault(group, {})[field] = value
        kinds = {f.name: f.default_factory for f in dataclasses.fields(cls) if f.name not in RUN_FIELDS}
        built = {group: kind(**groups.get(group, {})) for group, kind in kinds.items()}
        return cls(**built, **{k: flat[k] for k in RUN_FIELDS if k in flat})

    def to_flat(self) -> dict:
        """The flat settings, as config.json stores them."""
        flat = {name: getattr(getattr(self, group), field) for name, (group, field) in FLAT_NAMES.items()}
        return {**flat, **{k: getattr(self, k) for k in RUN_FIELDS}}

    @staticmethod
    def flat_default(name: str):
        """The default of a flat setting (the CLI's defaults are checked against these)."""
        if name in RUN_FIELDS:
            return {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]
        group, field = FLAT_NAMES[name]
        kind = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}[group]
        return getattr(kind(), field)

    def split_options(self) -> SplitOptions:
        d = self.data
        return SplitOptions(d.val_split, d.test_split, self.optim.seed, d.validate_on_test, d.groups, d.group_pattern)

    def validate(self) -> None:
        """Refuse impossible combinations before any image is decoded: every range is checked here, once."""
        if self.decision.operating_point is not None:
            parse_operating_point(self.decision.operating_point)
        try:
            spec = get_base(self.base.name)
        except ModelError as exc:
            raise DatasetError(str(exc)) from exc
        size = self.base.image_size
        if not isinstance(size, int) or size < spec.min_size:
            raise DatasetError(f"--image-size must be at least {spec.min_size} for {spec.name}, got {size}")
        if self.fine_tune.cut not in spec.cuts:
            raise DatasetError(
                f"--fine-tune-from must be one of {', '.join(spec.cuts)} for {spec.name}, got {self.fine_tune.cut}"
            )
        self._validate_data()
        self._validate_optimisation()
        self._validate_choices()

    def _validate_data(self) -> None:
        d, b = self.data, self.base
        if d.aug_views < 0:
            raise DatasetError("--aug-views must be 0 or more")
        if d.aug_views and d.augment is False:
            raise DatasetError("--aug-views needs augmentation; drop --no-augment")
        if d.aug_views and not b.cache_features:
            raise DatasetError("--aug-views precomputes features; drop --no-cache-features")
        if b.precision not in tuple(BasePrecision):
            raise DatasetError(f"--base-precision must be one of {_choices(BasePrecision)}")
        if b.precision not in ("auto", "fp32") and not b.cache_features:
            raise DatasetError(
                f"--base-precision {b.precision} applies to the cached frozen-base passes, and "
                "--no-cache-features trains the whole model in float32: drop one of them"
            )

    def _validate_optimisation(self) -> None:
        o, f = self.optim, self.fine_tune
        if o.epochs < 1:
            raise DatasetError("--epochs must be at least 1")
        if o.batch_size < 1:
            raise DatasetError("--batch-size must be at least 1")
        if o.lr <= 0 or (f.lr is not None and f.lr <= 0):
            raise DatasetError("--lr and --fine-tune-lr must be positive")
        if o.patience < 0:
            raise DatasetError("--patience must be 0 or more")
        if not 0 <= self.head.dropout < 1:
            raise DatasetError("--dropout must be in [0, 1)")
        if o.weight_decay < 0:
            raise DatasetError("--weight-decay must be 0 or more")
        if not 0 <= o.label_smoothing < 1:
            raise DatasetError("--label-smoothing must be in [0, 1)")
        if f.epochs < 0:
            raise DatasetError("--fine-tune-epochs must be 0 or more")
        name = o.monitor.removeprefix("val_")
        if name not in METRIC_NAMES:
            raise DatasetError(
                f"--monitor {o.monitor} is not a logged metric; choose from "
                + ", ".join(f"val_{m}" for m in METRIC_NAMES)
                + " (or the same without val_)"
            )

    def _validate_choices(self) -> None:
        for flag, value, enum in (
            ("--strategy", self.strategy, Strategy),
            ("--head", self.head.kind, Head),
            ("--class-weight", self.optim.class_weight, ClassWeight),
            ("--fine-tune-schedule", self.fine_tune.schedule, Schedule),
            ("--score-calibration", self.decision.score_calibration, ScoreCalibration),
        ):
            if value not in tuple(enum):
                raise DatasetError(f"{flag} must be one of {_choices(enum)}")

    @property
    def mode(self) -> str:
        return "features" if self.base.cache_features else "tutorial"


@dataclasses.dataclass
class TrainResult:
    run_dir: str
    best_epoch: int | None
    best_value: float | None
    monitor: str
    val_accuracy: float
    val_auc: float | None
    test_accuracy: float | None
    weights_source: str
    precision: str
    mode: str
    seconds: float = 0.0
    warnings: list[str] = dataclasses.field(default_factory=list)
    decision: Decision | None = None
    val_summary: str = ""  # balanced accuracy and per-class recall (metrics.recall_summary)
    test_summary: str = ""
    calibration_summary: str = ""  # the temperature and ECE/Brier/log loss before -> after (calibration.summary)


# What a settings file may not set: where the data and the run are (the command line says that).
PLACE_SETTINGS = ("data_dir", "out", "cache_dir", "strategy")


def read_settings(path) -> dict:
    """Flat training settings from `--config FILE`: `toolkit tune`'s best.json ({"settings": {...}}) or a run's
    config.json (flat); where the data and run go (PLACE_SETTINGS) is left out. A bad file is one line."""
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"--config {path}: {' '.join(str(exc).split())[:160]}") from None
    settings = data.get("settings", data) if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        raise DatasetError(f"--config {path}: expected a JSON object of training settings")
    unknown = sorted(set(settings) - set(FLAT_NAMES) - set(RUN_FIELDS))
    if unknown:
        raise DatasetError(f"--config {path}: unknown setting(s) {', '.join(unknown)}")
    return {k: v for k, v in settings.items() if k not in PLACE_SETTINGS}
