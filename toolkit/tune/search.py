"""`toolkit tune DATA`: Keras Tuner over the head on cached features, scored by stratified K-fold CV.

The frozen base's features of every non-test image are extracted once into RUN/tune/features.npy
(test images are never decoded into the search), so a trial costs only its head. A trial trains its
head on K-1 folds and scores the held-out fold, K times (`--folds 1`: the run's own validation split);
its score is the mean fold accuracy and its spread the folds' standard deviation. With `--groups` or
`--group-pattern`, a group stays in one fold (scikit-learn's StratifiedGroupKFold), as the splits do.

Keras Tuner's project folder (RUN/tune/keras_tuner) holds the oracle's state after every trial, so a
search stopped by Ctrl-C or a kill resumes where it was when run again (one writer: the folder lock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import numpy as np

from toolkit.errors import SearchStopped, TrainingError
from toolkit.fileio import folder_lock, write_json_atomic
from toolkit.progress import phase
from toolkit.tune.space import OBJECTIVE, SPACE, sample_all, values_of

SEARCH = "search.json"


class TunerKind(StrEnum):
    """`--tuner`: Bayesian optimisation (a Gaussian process over the space) or Hyperband (early-stopped brackets)."""

    bayesian = "bayesian"
    hyperband = "hyperband"


@dataclasses.dataclass
class TuneOptions:
    """What `toolkit tune` is asked to do beyond the training settings: the only home of its defaults."""

    tuner: TunerKind = TunerKind.bayesian
    max_trials: int = 20
    time_budget_s: float | None = None  # no new trial starts after this many seconds of the search
    folds: int = 3  # 1: train on the train split, score the validation split
    batch_size: int = 32
    workers: int = 0  # >= 1: a chief oracle and this many worker processes here (toolkit.tune.distributed)
    oracle_host: str = "127.0.0.1"  # where the local chief listens (0.0.0.0: workers on other machines join)
    oracle_port: int | None = None  # None: a free port
    chief: str | None = None  # HOST:PORT: run as one worker of a chief started elsewhere
    bases: list[str] | None = None  # several bases: one more choice (None: the config's base)
    fine_tune: bool = True  # the fine-tuning schedule in the space (tune/finetune.py); False: heads only


@dataclasses.dataclass
class CachedFeatures:
    """The frozen base's output for every non-test image, with labels, the validation mask and the groups."""

    features: dict[str, np.ndarray]  # base name -> N x h x w x C (a memmap)
    labels: np.ndarray
    in_val: np.ndarray  # bool: the run's own validation split (used by --folds 1)
    groups: list[str] | None
    num_classes: int
    cuts: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)  # base -> cut -> features
    classifier: Callable[[str], object] | None = None  # base -> its classifier, built once per process
    pretrained: dict[str, object] = dataclasses.field(default_factory=dict)  # base -> finetune.Pretrained

    def pretrained_base(self, base: str):
        """The base's pretrained weights above each cut (tune/finetune.py), made on the first trial that fine-tunes."""
        from toolkit.tune.finetune import pretrained

        if base not in self.pretrained:
            self.pretrained[base] = pretrained(self.classifier(base))
        return self.pretrained[base]


def bases_of(config, options: TuneOptions) -> list[str]:
    """The bases a search covers: --bases, else the config's one."""
    return list(options.bases or []) or [config.base.name]


def cache_features(config, options: TuneOptions, tune_dir: Path, log: Callable[[str], None]) -> CachedFeatures:
    """Extract (once per base) the features of the train and validation splits, at the top and at every cut
    when the search fine-tunes; finished stores are reused."""
    from toolkit.data.groups import path_groups
    from toolkit.model import build_classifier
    from toolkit.train.loop import load_training_data
    from toolkit.tune.features import cache_base_features, store_paths
    from toolkit.weights import WeightsRequest

    data = load_training_data(config, Path(config.data.cache_dir or tune_dir / "cache"), log)
    labels = np.concatenate([data.train.labels, data.val.labels]).astype(np.int64)
    in_val = np.arange(len(labels)) >= len(data.train.labels)
    paths = list(data.train.paths) + list(data.val.paths)
    found = path_groups(Path(config.data.folder), paths, config.data.groups, config.data.group_pattern)
    groups = [found[p] for p in paths] if found else None
    models: dict[str, object] = {}

    def classifier(base: str):
        if base not in models:
            request = WeightsRequest(config.base.weights, log=log)
            models[base], _ = build_classifier(len(data.classes), config.base.image_size, request, base=base)
        return models[base]

    @functools.cache
    def images() -> np.ndarray:  # concatenated once, and only when a store has to be made
        return np.concatenate([np.asarray(data.train.images), np.asarray(data.val.images)])

    cached = CachedFeatures({}, labels, in_val, groups, len(data.classes), classifier=classifier)
    for base in bases_of(config, options):
        build = lambda base=base: classifier(base)  # noqa: E731
        stores = cache_base_features(build, images, len(labels), store_paths(tune_dir, base, options.fine_tune), base)
        cached.features[base] = stores.pop(None)
        if options.fine_tune:
            cached.cuts[base] = stores
    return cached


def fold_indices(cached: CachedFeatures, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, held-out rows) per fold: stratified, whole groups where given; --folds 1 is the run's split."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    rows = np.arange(len(cached.labels))
    if folds == 1:
        return [(rows[~cached.in_val], rows[cached.in_val])]
    if np.bincount(cached.labels).min() < folds:
        raise TrainingError(f"--folds {folds}: a class has fewer images than folds")
    if cached.groups is not None:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(a, b) for a, b in splitter.split(rows, cached.labels, cached.groups)]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(a, b) for a, b in splitter.split(rows, cached.labels)]


def _train_fold(values: dict, cached: CachedFeatures, train: np.ndarray, held: np.ndarray, epochs: int, seed: int,
                batch_size: int) -> tuple[float, float]:  # fmt: skip
    """(accuracy, log loss) on the held-out rows of a head with `values`, trained on the other rows."""
    import keras

    from toolkit.model import build_head, feature_norm, pre_norm, set_feature_statistics
    from toolkit.train.config import TrainConfig
    from toolkit.train.fit import class_weights, compile_model

    keras.utils.set_random_seed(seed)
    features = cached.features[values["base"]]
    head = build_head(tuple(features.shape[1:]), cached.num_classes, values["head"], values["dropout"],
                      values["feature_norm"])  # fmt: skip
    train, held = np.sort(train), np.sort(held)  # memmap rows in order
    x_train = np.asarray(features[train], np.float32)
    y_train = cached.labels[train]
    if feature_norm(head) is not None:
        pooled = pre_norm(head).predict(x_train, batch_size=256, verbose=0).astype(np.float64)
        set_feature_statistics(head, pooled.mean(0), pooled.var(0))
    config = TrainConfig.from_flat(**{k: values[k] for k in ("lr", "weight_decay", "label_smoothing")})
    compile_model(head, values["lr"], config)
    onehot = keras.utils.to_categorical(y_train, cached.num_classes)
    weights = class_weights(values["class_weight"], y_train, cached.num_classes)
    head.fit(x_train, onehot, batch_size=batch_size, epochs=epochs, class_weight=weights, verbose=0, shuffle=True)
    if values["fine_tune_epochs"] > 0:
        from toolkit.tune.finetune import FineTuneStep, fine_tune_fold

        base = values["base"]
        step = FineTuneStep(cached.pretrained_base(base), cached.cuts[base][values["fine_tune_from"]], cached.labels,
                            cached.num_classes, batch_size)  # fmt: skip
        probs = fine_tune_fold(values, step, head, (train, held), weights)
    else:
        probs = head.predict(np.asarray(features[held], np.float32), batch_size=256, verbose=0)
    y_held = cached.labels[held]
    accuracy = float((probs.argmax(1) == y_held).mean())
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_held)), y_held], 1e-7, 1.0))))
    return accuracy, loss


def _space(bases: list[str], fine_tune: bool):
    import keras_tuner as kt

    class HeadSpace(kt.HyperModel):
        """Registers the space (and the base, when several) with the tuner; trials train on features (`_score`)."""

        def build(self, hp):
            sample_all(hp, bases, fine_tune)

    return HeadSpace()


def _score(values: dict, epochs: int, cached: CachedFeatures, folds: list, options: TuneOptions, seed: int) -> dict:
    """A trial's metrics: mean and spread of the held-out accuracy over the folds, and the mean log loss."""
    scores = [_train_fold(values, cached, a, b, epochs, seed, options.batch_size) for a, b in folds]
    accuracy = np.array([s[0] for s in scores])
    return {
        OBJECTIVE: float(accuracy.mean()),
        f"{OBJECTIVE}_std": float(accuracy.std()),
        "val_loss": float(np.mean([s[1] for s in scores])),
    }


def _tuner(score: Callable[[dict, int], dict] | None, options: TuneOptions, bases: list[str], folder: Path,
           seed: int, deadline: float | None, log):  # fmt: skip
    import keras_tuner as kt

    kind = options.tuner
    objective = kt.Objective(OBJECTIVE, direction="max")
    common = {"objective": objective, "directory": str(folder), "project_name": "keras_tuner", "overwrite": False,
              "seed": seed}  # fmt: skip
    if kind == TunerKind.hyperband:
        max_epochs = max(h.choices for h in SPACE if h.name == "epochs")[-1]
        base = kt.Hyperband
        settings = {"max_epochs": max_epochs, "factor": 3, "max_retries_per_trial": 0, **common}
    else:
        base = kt.BayesianOptimization
        settings = {"max_trials": options.max_trials, "max_retries_per_trial": 0, **common}

    class Budgeted(base):
        """Trials on cached features; no new trial after the time budget (or, Hyperband, max_trials finished)."""

        def run_trial(self, trial, *args, **kwargs):
            values = values_of(trial.hyperparameters.values, bases)
            # Hyperband's bracket sets the epochs (its "tuner/epochs"); Bayesian trials sample them.
            self.last_metrics = {}
            self.last_metrics = score(values, int(trial.hyperparameters.values.get("tuner/epochs", values["epochs"])))
            return self.last_metrics  # a worker's trial keeps no metrics locally: the chief's oracle holds them

        def pre_create_trial(self):
            super().pre_create_trial()
            if deadline is not None and time.monotonic() >= deadline:
                raise SearchStopped("time budget")
            if kind == TunerKind.hyperband and not self._is_worker() and _completed(self) >= options.max_trials:
                raise SearchStopped("max trials")

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            metrics = getattr(self, "last_metrics", {})
            score_, spread = metrics.get(OBJECTIVE, float("nan")), metrics.get(f"{OBJECTIVE}_std", float("nan"))
            where = f" on {self.tuner_id}" if self._is_worker() else f" ({_completed(self)} done)"
            log(f"trial {trial.trial_id}: accuracy {score_:.4f} ± {spread:.4f}{where}")

    with contextlib.redirect_stdout(io.StringIO()):  # "Reloading Tuner from ...": not on a --json stdout
        return Budgeted(_space(bases, options.fine_tune), **settings)


def _completed(tuner) -> int:
    return len([t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"])


def write_search_record(config, options: TuneOptions, tune_dir: Path) -> None:
    """search.json: the settings and options a worker process rebuilds the search from."""
    write_json_atomic(tune_dir / SEARCH, {"config": config.to_flat(), "options": dataclasses.asdict(options)})


def read_search_record(tune_dir: Path):
    """(TrainConfig, TuneOptions) from search.json."""
    from toolkit.train.config import TrainConfig

    data = json.loads((tune_dir / SEARCH).read_text())
    options = dict(data["options"])
    options["tuner"] = TunerKind(options["tuner"])
    return TrainConfig.from_flat(**data["config"]), TuneOptions(**options)


def run_search(config, options: TuneOptions, tune_dir: Path, log: Callable[[str], None], trials: bool = True):
    """Build the tuner (a distributed role from KERASTUNER_* in the environment) and search until it stops.

    `trials` False: the chief oracle, which serves the others and never trains, needs no features.
    """
    seed, bases = config.optim.seed, bases_of(config, options)
    if trials:
        cached = cache_features(config, options, tune_dir, log)
        folds = fold_indices(cached, options.folds, seed)
        score = lambda values, epochs: _score(values, epochs, cached, folds, options, seed)  # noqa: E731
    else:
        score = None
    deadline = time.monotonic() + options.time_budget_s if options.time_budget_s else None
    tuner = _tuner(score, options, bases, tune_dir, seed, deadline, log)
    try:
        tuner.search(verbose=0)
    except SearchStopped as reason:
        log(f"no new trial: {reason}")
    return tuner


def report_tuner(config, options: TuneOptions, tune_dir: Path):
    """The search's tuner, reloaded from its project folder in this process (for the report)."""
    bases = bases_of(config, options)
    return _tuner(None, options, bases, tune_dir, config.optim.seed, None, lambda _m: None)


def search(config, options: TuneOptions, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) the search into RUN/tune; return the folder with its report (report.write_report).

    `options.workers` >= 1: a chief oracle and that many worker processes here; `options.chief`: this
    process is one worker of a chief elsewhere (`toolkit.tune.distributed`).
    """
    from toolkit.tf_setup import import_tensorflow
    from toolkit.tune.report import write_report

    import_tensorflow()
    tune_dir = Path(config.out) / "tune"
    tune_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(tune_dir, False):
        write_search_record(config, options, tune_dir)
        what = f"searching ({options.tuner}, up to {options.max_trials} trials, {options.folds} folds"
        if options.chief:
            from toolkit.tune.distributed import join_chief

            with phase(f"{what}, a worker of {options.chief})"):
                join_chief(options.chief)  # this process's role, in the environment Keras Tuner reads
                run_search(config, options, tune_dir, log)
            return tune_dir  # the chief's machine holds the trials and writes the report
        if options.workers:
            from toolkit.tune.distributed import run_local_cluster

            cache_features(config, options, tune_dir, log)  # once, before the workers read it
            with phase(f"{what}, {options.workers} workers)"):
                run_local_cluster(tune_dir, options.workers, log, options.oracle_host, options.oracle_port)
            tuner = report_tuner(config, options, tune_dir)
        else:
            with phase(f"{what})"):
                tuner = run_search(config, options, tune_dir, log)
        write_report(tuner, config, tune_dir, bases_of(config, options))
    return tune_dir
