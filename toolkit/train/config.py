"""What a training run is asked to do (`TrainConfig`, stored as config.json) and what it returns."""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from toolkit.bases import DEFAULT_BASE, get_base
from toolkit.bases.spec import REGISTRY
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
    """auto: balanced class weights, for imbalanced data."""

    none = "none"
    auto = "auto"


class Schedule(StrEnum):
    """The fine-tuning learning rate over its epochs."""

    constant = "constant"
    cosine = "cosine"


def _choices(enum: type[StrEnum]) -> str:
    return ", ".join(enum)


@dataclasses.dataclass
class TrainConfig:
    """What `toolkit train` is asked to do: the only home of its defaults (the CLI reads them from here)."""

    data_dir: str
    out: str
    base: str = DEFAULT_BASE  # a name in toolkit.bases (test-only bases too, through the library)
    image_size: int | None = None  # the base's own default size (224 for every public base)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    val_split: float = SplitOptions.val_split
    test_split: float = SplitOptions.test_split  # flat folders only: the held-out test share
    validate_on_test: bool = SplitOptions.validate_on_test  # train/ + test/: validate on test/ as the tutorial does
    positive_class: str | None = None  # two classes: the finding (default: the label that sorts second)
    operating_point: str | None = None  # "sensitivity=0.95", "specificity=0.9" or "threshold=0.3"
    augment: bool = True
    aug_views: int = 0
    cache_features: bool = True
    precision: BasePrecision = BasePrecision.auto  # --base-precision
    head: Head = Head.gap_gmp  # measured on real images (benchmarks/REAL.md); flatten is the tutorial's
    dropout: float = 0.3
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (0: plain Adam)
    label_smoothing: float = 0.0
    weights: str = "imagenet"
    allow_random_weights: bool = False
    monitor: Monitor = Monitor.val_accuracy  # what the user judges the model by; val_loss picked epoch 1 on ELPV
    patience: int = 0
    class_weight: ClassWeight = ClassWeight.none
    fine_tune_epochs: int = 0
    fine_tune_lr: float | None = None  # default lr/10
    fine_tune_schedule: Schedule = Schedule.constant  # or cosine: per epoch, from fine_tune_lr down to 0
    fine_tune_from: str | None = None  # a cut of the base (default: its first); cached: trained on its output
    strategy: Strategy = Strategy.default
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        """None means the base's own: its default image size and its first fine-tuning cut (config.json stores them)."""
        spec = REGISTRY.get(self.base)
        if spec is not None:
            self.image_size = spec.default_size if self.image_size is None else self.image_size
            self.fine_tune_from = spec.default_cut if self.fine_tune_from is None else self.fine_tune_from

    def split_options(self) -> SplitOptions:
        return SplitOptions(self.val_split, self.test_split, self.seed, self.validate_on_test)

    def validate(self) -> None:
        """Refuse impossible combinations before any image is decoded."""
        if self.operating_point is not None:
            parse_operating_point(self.operating_point)
        try:
            spec = get_base(self.base)
        except ModelError as exc:
            raise DatasetError(str(exc)) from exc
        if not isinstance(self.image_size, int) or self.image_size < spec.min_size:
            raise DatasetError(f"--image-size must be at least {spec.min_size} for {spec.name}, got {self.image_size}")
        if self.fine_tune_from not in spec.cuts:
            raise DatasetError(
                f"--fine-tune-from must be one of {', '.join(spec.cuts)} for {spec.name}, got {self.fine_tune_from}"
            )
        if self.epochs < 1:
            raise DatasetError("--epochs must be at least 1")
        if self.batch_size < 1:
            raise DatasetError("--batch-size must be at least 1")
        if self.lr <= 0 or (self.fine_tune_lr is not None and self.fine_tune_lr <= 0):
            raise DatasetError("--lr and --fine-tune-lr must be positive")
        if self.patience < 0:
            raise DatasetError("--patience must be 0 or more")
        if self.aug_views < 0:
            raise DatasetError("--aug-views must be 0 or more")
        if self.aug_views and not self.augment:
            raise DatasetError("--aug-views needs augmentation; drop --no-augment")
        if self.aug_views and not self.cache_features:
            raise DatasetError("--aug-views precomputes features; drop --no-cache-features")
        if self.precision not in tuple(BasePrecision):
            raise DatasetError(f"--base-precision must be one of {_choices(BasePrecision)}")
        if self.precision not in ("auto", "fp32") and not self.cache_features:
            raise DatasetError(
                f"--base-precision {self.precision} applies to the cached frozen-base passes, and "
                "--no-cache-features trains the whole model in float32: drop one of them"
            )
        if not 0 <= self.dropout < 1:
            raise DatasetError("--dropout must be in [0, 1)")
        if self.weight_decay < 0:
            raise DatasetError("--weight-decay must be 0 or more")
        if not 0 <= self.label_smoothing < 1:
            raise DatasetError("--label-smoothing must be in [0, 1)")
        if self.strategy not in tuple(Strategy):
            raise DatasetError(f"--strategy must be one of {_choices(Strategy)}")
        if self.head not in tuple(Head):
            raise DatasetError(f"--head must be one of {_choices(Head)}")
        if self.class_weight not in tuple(ClassWeight):
            raise DatasetError(f"--class-weight must be one of {_choices(ClassWeight)}")
        if self.fine_tune_schedule not in tuple(Schedule):
            raise DatasetError(f"--fine-tune-schedule must be one of {_choices(Schedule)}")
        if self.fine_tune_epochs < 0:
            raise DatasetError("--fine-tune-epochs must be 0 or more")
        name = self.monitor.removeprefix("val_")
        if name not in METRIC_NAMES:
            raise DatasetError(
                f"--monitor {self.monitor} is not a logged metric; choose from "
                + ", ".join(f"val_{m}" for m in METRIC_NAMES)
                + " (or the same without val_)"
            )

    @property
    def mode(self) -> str:
        return "features" if self.cache_features else "tutorial"


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
