"""What a training run is asked to do (`TrainConfig`, stored as config.json) and what it returns."""

from __future__ import annotations

import dataclasses

from toolkit.data import SplitOptions
from toolkit.errors import DatasetError
from toolkit.hardware import PRECISIONS, STRATEGIES
from toolkit.model import FINE_TUNE_CUTS, HEADS
from toolkit.operating_point import Decision, parse_operating_point

METRIC_NAMES = ("loss", "accuracy", "auc", "precision", "recall")
CLASS_WEIGHTS = ("none", "auto")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class TrainConfig:
    data_dir: str
    out: str
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    val_split: float = 0.15
    test_split: float = 0.15  # flat folders only: the held-out test share
    validate_on_test: bool = False  # train/ + test/: validate on test/ as the Keras tutorial does
    positive_class: str | None = None  # two classes: the finding (default: the label that sorts second)
    operating_point: str | None = None  # "sensitivity=0.95", "specificity=0.9" or "threshold=0.3"
    augment: bool = True
    aug_views: int = 0
    cache_features: bool = True
    precision: str = "auto"
    head: str = "gap+gmp"  # measured on real images (README "Real data"); flatten is the tutorial's
    dropout: float = 0.3
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (0: plain Adam)
    label_smoothing: float = 0.0
    weights: str = "imagenet"
    allow_random_weights: bool = False
    monitor: str = "val_accuracy"  # what the user judges the model by; val_loss picked epoch 1 on ELPV
    patience: int = 0
    class_weight: str = "none"  # "none" or "auto"
    fine_tune_epochs: int = 0
    fine_tune_lr: float | None = None
    fine_tune_schedule: str = "constant"  # or "cosine": per epoch, from fine_tune_lr down to 0
    fine_tune_from: str = "block5"  # the first unfrozen block; with cached features, trained on the cut's output
    strategy: str = "default"
    cache_dir: str | None = None

    def split_options(self) -> SplitOptions:
        return SplitOptions(self.val_split, self.test_split, self.seed, self.validate_on_test)

    def validate(self) -> None:
        """Refuse impossible combinations before any image is decoded."""
        if self.operating_point is not None:
            parse_operating_point(self.operating_point)
        if self.epochs < 1:
            raise DatasetError("--epochs must be at least 1")
        if self.batch_size < 1:
            raise DatasetError("--batch-size must be at least 1")
        if self.aug_views < 0:
            raise DatasetError("--aug-views must be 0 or more")
        if self.aug_views and not self.augment:
            raise DatasetError("--aug-views needs augmentation; drop --no-augment")
        if self.aug_views and not self.cache_features:
            raise DatasetError("--aug-views precomputes features; drop --no-cache-features")
        if self.precision not in PRECISIONS:
            raise DatasetError(f"--base-precision must be one of {', '.join(PRECISIONS)}")
        if self.precision not in ("auto", "fp32") and not self.cache_features:
            raise DatasetError(
                f"--base-precision {self.precision} applies to the cached frozen-base passes, and "
                "--no-cache-features trains the whole model in float32: drop one of them"
            )
        if self.fine_tune_from not in FINE_TUNE_CUTS:
            raise DatasetError(f"--fine-tune-from must be one of {', '.join(FINE_TUNE_CUTS)}")
        if not 0 <= self.dropout < 1:
            raise DatasetError("--dropout must be in [0, 1)")
        if self.weight_decay < 0:
            raise DatasetError("--weight-decay must be 0 or more")
        if not 0 <= self.label_smoothing < 1:
            raise DatasetError("--label-smoothing must be in [0, 1)")
        if self.strategy not in STRATEGIES:
            raise DatasetError(f"--strategy must be one of {', '.join(STRATEGIES)}")
        if self.head not in HEADS:
            raise DatasetError(f"--head must be one of {', '.join(HEADS)}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise DatasetError("--class-weight must be none or auto")
        if self.fine_tune_schedule not in SCHEDULES:
            raise DatasetError(f"--fine-tune-schedule must be one of {', '.join(SCHEDULES)}")
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
