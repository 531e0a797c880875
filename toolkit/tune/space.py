"""The search space of `toolkit tune`: one record per hyperparameter, named as `toolkit train`'s setting it sets.

Each record says how Keras Tuner samples it (a choice, or a float range, log-scaled where the scale
spans decades) and which `TrainConfig` flat setting it becomes, so the best trial is a `toolkit train
--config best.json` away. The defaults of the frozen phase are among the choices, so a search can only
find them or something its folds score higher.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from toolkit.bases import get_base
from toolkit.model import Head
from toolkit.train.config import ClassWeight, Schedule


@dataclasses.dataclass(frozen=True)
class Hyper:
    name: str  # the TrainConfig flat name (and the Keras Tuner hyperparameter's)
    choices: tuple[Any, ...] = ()
    low: float | None = None  # a float range instead of choices
    high: float | None = None
    log: bool = False

    def value(self, raw):
        """A stored value as the setting's own type (Keras Tuner keeps a boolean choice as 0 or 1)."""
        if self.choices and isinstance(self.choices[0], bool):
            return bool(raw)
        return raw

    def sample(self, hp):
        if self.choices:
            return hp.Choice(self.name, list(self.choices))
        return hp.Float(self.name, self.low, self.high, sampling="log" if self.log else "linear")


SPACE: tuple[Hyper, ...] = (
    Hyper("head", choices=tuple(str(h) for h in Head)),
    Hyper("dropout", choices=(0.0, 0.2, 0.3, 0.5)),
    Hyper("feature_norm", choices=(True, False)),
    Hyper("lr", low=1e-4, high=1e-2, log=True),
    Hyper("weight_decay", choices=(0.0, 1e-4, 1e-3, 1e-2)),
    Hyper("label_smoothing", choices=(0.0, 0.05, 0.1)),
    Hyper("class_weight", choices=tuple(str(c) for c in ClassWeight)),
    Hyper("epochs", choices=(5, 10, 20)),
)
# The fine-tuning schedule: epochs with the base above the cut unfrozen (0: none), its rate and schedule, and the
# cut as a position in the base's `cuts` (0: its first, shallowest one), so one choice serves every base searched.
FINE_TUNE: tuple[Hyper, ...] = (
    Hyper("fine_tune_epochs", choices=(0, 3, 6)),
    Hyper("fine_tune_lr", low=1e-5, high=1e-3, log=True),
    Hyper("fine_tune_schedule", choices=tuple(str(s) for s in Schedule)),
    Hyper("fine_tune_from", choices=(0, 1)),
)
CUT = "fine_tune_from"
NAMES = tuple(h.name for h in SPACE + FINE_TUNE)


OBJECTIVE = "val_accuracy"  # a trial's score: the mean held-out accuracy over folds (its spread: val_accuracy_std)
BASE = "base"  # one more choice when a search covers several bases (`--bases`)


def space(fine_tune: bool) -> tuple[Hyper, ...]:
    """The records a search samples: the head's, and the fine-tuning schedule's unless it is left out."""
    return SPACE + FINE_TUNE if fine_tune else SPACE


def cut_name(base: str, position: int) -> str:
    """The base's cut at `position` in its `cuts` (every base has two: the default, then a deeper one)."""
    cuts = list(get_base(base).cuts)
    return cuts[min(int(position), len(cuts) - 1)]


def values_of(stored: dict, bases: list[str]) -> dict[str, Any]:
    """A trial's settings, each as its setting's type: the base, and the cut by its name in that base.

    A search without the fine-tuning records stores none of them: its trials did not fine-tune.
    """
    values = {h.name: h.value(stored[h.name]) for h in SPACE + FINE_TUNE if h.name in stored}
    values.setdefault("fine_tune_epochs", 0)
    values[BASE] = stored.get(BASE, bases[0])
    if CUT in values:
        values[CUT] = cut_name(values[BASE], values[CUT])
    return values


def sample_all(hp, bases: list[str], fine_tune: bool = True) -> dict[str, Any]:
    """Every hyperparameter of the space for this trial, by its flat name; the base too when there are several."""
    values = {h.name: h.sample(hp) for h in space(fine_tune)}
    values[BASE] = hp.Choice(BASE, list(bases)) if len(bases) > 1 else bases[0]
    return values
