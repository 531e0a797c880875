"""`toolkit train`: its options in the groups TrainConfig keeps them in, each range checked by the library.

The panels (Typer's `rich_help_panel`) are the concerns of `toolkit.train.config`;
no option carries a range here: `TrainConfig.validate` checks each one once and says
what is wrong in one line (exit 2), so the CLI and the library cannot disagree.
"""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated

import typer

from toolkit.bases import base_names, cuts_help, get_base
from toolkit.calibration import ScoreCalibration
from toolkit.cli_flags import Arg, Opt
from toolkit.console import echo_json, use_progress, user_errors
from toolkit.errors import ToolkitError
from toolkit.hardware import BasePrecision, Strategy
from toolkit.model import Head
from toolkit.train.config import FLAT_NAMES, RUN_FIELDS, ClassWeight, Monitor, Schedule, TrainConfig, read_settings
from toolkit.tune.search import TuneOptions, TunerKind

FLAT = (*FLAT_NAMES, *RUN_FIELDS)
# Every default below is TrainConfig's, by its flat name (tests/test_cli_defaults.py checks them).
TRAIN = SimpleNamespace(**{name: TrainConfig.flat_default(name) for name in FLAT})
DATA, BASE, HEAD, FIT, FINE, DECIDE, RUN = (
    "Data",
    "Base network",
    "Head",
    "Optimisation",
    "Fine-tuning",
    "Decision (two classes)",
    "Run",
)


# Each group's options show under its panel (the same groups as TrainConfig's).
DataOpt, BaseOpt, HeadOpt, FitOpt, FineOpt, DecideOpt, RunOpt = (
    functools.partial(Opt, rich_help_panel=panel) for panel in (DATA, BASE, HEAD, FIT, FINE, DECIDE, RUN)
)


def _explicit_options(ctx: typer.Context) -> set[str]:
    """The options the user typed (not defaults): `--resume` compares them with the stored config."""
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}


def _typed_settings(ctx: typer.Context) -> set[str]:
    """The training settings the user typed, by their flat names: `--resume` refuses any that differ."""
    explicit = _explicit_options(ctx) - {"out", "resume", "quiet", "json_output", "wait", "settings_file"}
    return {"precision" if name == "base_precision" else name for name in explicit} | {"data_dir"}


def _run_folder(out: Path | None, resume: bool) -> Path:
    """--out, or models/<timestamp> for a new run (a resumed run must name its folder)."""
    if out is not None:
        return out
    if resume:
        raise ToolkitError("--resume needs --out RUN_DIR")
    import datetime

    return Path("models") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _config(
    ctx: typer.Context, data_dir: Path, out: Path, cache_dir: Path | None, precision, settings_file: Path | None
) -> TrainConfig:
    """The TrainConfig of the parsed options, by their flat names; `--config FILE`'s settings replace the
    defaults, and the options typed on the command line win over both."""
    paths = {"data_dir": str(data_dir), "out": str(out), "cache_dir": str(cache_dir) if cache_dir else None}
    given = {k: (v.value if isinstance(v, Enum) else v) for k, v in ctx.params.items() if k in FLAT}
    settings = {**given, "precision": precision.value}
    if settings_file is not None:
        typed = {"precision" if name == "base_precision" else name for name in _explicit_options(ctx)}
        settings.update({k: v for k, v in read_settings(settings_file).items() if k not in typed})
    return TrainConfig.from_flat(**{**settings, **paths})


# `toolkit train`'s options, one alias each: the command's signature stays one line per option
TrainDataDir = Annotated[Path, Arg(help="DATA_DIR/train/<class>/ [+ val/] [+ test/], or DATA_DIR/<class>/.")]
TrainValSplit = Annotated[float, DataOpt(help="Validation share carved from train/ (or a flat folder).")]
TrainTestSplit = Annotated[float, DataOpt(help="Held-out test share of a flat DATA_DIR/<class>/ folder.")]
TrainValidateOnTest = Annotated[
    bool,
    DataOpt(help="train/ + test/ only: validate on test/ as the Keras tutorial does (no held-out test)."),
]
TrainGroups = Annotated[
    str | None, DataOpt(metavar="CSV", help="path,group rows: a group never spans two carved splits.")
]
TrainGroupPattern = Annotated[
    str | None, DataOpt(metavar="REGEX", help="Or a group from each path under DATA_DIR (its first group).")
]
TrainAugment = Annotated[
    bool | None,
    DataOpt(
        "--augment/--no-augment",
        help="Random flip, shift, zoom, rotation (default: auto, off for registered images).",
        show_default=False,
    ),
]
TrainAugViews = Annotated[int, DataOpt(help="Precompute K augmented views (0: fresh each epoch).")]
TrainCacheDir = Annotated[Path | None, DataOpt(help="Decoded-image cache (default RUN_DIR/cache).")]
TrainBase = Annotated[
    str, Opt(help=f"The frozen network: {', '.join(base_names())} (toolkit bases).", rich_help_panel=BASE)
]
TrainImageSize = Annotated[int | None, BaseOpt(help="Square image side in pixels (default: the base's own, 224).")]
TrainWeights = Annotated[str, BaseOpt(help="imagenet, none, or a local weights file.")]
TrainAllowRandomWeights = Annotated[
    bool, BaseOpt(help="If no ImageNet weights can be had, train from random weights (loudly).")
]
TrainCacheFeatures = Annotated[
    bool,
    BaseOpt("--cache-features/--no-cache-features", help="Run the frozen base once, train the head on its output."),
]
TrainBasePrecision = Annotated[BasePrecision, BaseOpt(help="Compute precision of the cached frozen-base passes.")]
TrainHead = Annotated[
    Head, HeadOpt(help="flatten (Flatten+Dense); pooled: gap, gmp, gap+gmp (+Dropout+Dense); mlp (+Dense 512).")
]
TrainDropout = Annotated[float, HeadOpt(help="Dropout before the pooled heads' Dense layer.")]
TrainFeatureNorm = Annotated[
    bool,
    HeadOpt("--feature-norm/--no-feature-norm", help="Standardise the head's inputs with training statistics."),
]
TrainEpochs = Annotated[int, FitOpt(help="Epochs of the frozen-base phase.")]
TrainWeightDecay = Annotated[float, FitOpt(help="AdamW weight decay (0: Adam).")]
TrainLabelSmoothing = Annotated[float, FitOpt(help="Label smoothing of the cross-entropy.")]
TrainClassWeight = Annotated[
    ClassWeight, FitOpt(help="balanced: each class weighs the same; auto: balanced for more than two classes.")
]
TrainMonitor = Annotated[Monitor, FitOpt(metavar="METRIC", help=f"Picks the best epoch: {', '.join(Monitor)}.")]
TrainPatience = Annotated[int, FitOpt(help="Early-stopping patience in epochs (0: off).")]
TrainFineTuneEpochs = Annotated[int, FineOpt(help="Epochs with the base above --fine-tune-from unfrozen, afterwards.")]
TrainFineTuneLr = Annotated[float | None, FineOpt(help="Fine-tuning learning rate (default lr/10).")]
TrainFineTuneSchedule = Annotated[Schedule, FineOpt(help="cosine: decay the fine-tuning rate to 0 over its epochs.")]
TrainFineTuneFrom = Annotated[
    str | None,
    FineOpt(help=f"Where the unfrozen part starts (default: the base's first cut). {cuts_help()}."),
]
TrainPositiveClass = Annotated[
    str | None, DecideOpt(help="The finding (AUC etc.; default: the label that sorts second).")
]
TrainOperatingPoint = Annotated[
    str | None,
    DecideOpt(help="sensitivity=S, specificity=S or threshold=T, chosen on validation."),
]
TrainScoreCalibration = Annotated[
    ScoreCalibration,
    DecideOpt(help="temperature: fit one temperature on validation and fold it into the last layer."),
]
TrainTta = Annotated[
    bool,
    DecideOpt(
        "--tta/--no-tta",
        help="Test-time augmentation in the model: average 4 flipped views of each image (4x compute; docs/training.md).",
    ),
]
TrainOut = Annotated[Path | None, RunOpt(help="Run folder (default models/<timestamp>).")]
TrainSettingsFile = Annotated[
    Path | None, RunOpt("--config", help="Settings from a file (toolkit tune's best.json); typed options win.")
]
TrainStrategy = Annotated[Strategy, RunOpt(help="multiworker reads TF_CONFIG.")]
TrainResume = Annotated[bool, RunOpt(help="Continue an interrupted run in --out (only --epochs may change).")]
TrainWait = Annotated[bool, RunOpt(help="If another process writes --out, wait for it (default: exit 2).")]
TrainJsonOutput = Annotated[bool, RunOpt("--json", help="Print the result as JSON (no progress output).")]


@user_errors
def train(
    ctx: typer.Context,
    data_dir: TrainDataDir,
    val_split: TrainValSplit = TRAIN.val_split,
    test_split: TrainTestSplit = TRAIN.test_split,
    validate_on_test: TrainValidateOnTest = TRAIN.validate_on_test,
    groups: TrainGroups = TRAIN.groups,
    group_pattern: TrainGroupPattern = TRAIN.group_pattern,
    augment: TrainAugment = TRAIN.augment,
    aug_views: TrainAugViews = TRAIN.aug_views,
    cache_dir: TrainCacheDir = TRAIN.cache_dir,
    base: TrainBase = TRAIN.base,
    image_size: TrainImageSize = None,
    weights: TrainWeights = TRAIN.weights,
    allow_random_weights: TrainAllowRandomWeights = TRAIN.allow_random_weights,
    cache_features: TrainCacheFeatures = TRAIN.cache_features,
    base_precision: TrainBasePrecision = TRAIN.precision,
    head: TrainHead = TRAIN.head,
    dropout: TrainDropout = TRAIN.dropout,
    feature_norm: TrainFeatureNorm = TRAIN.feature_norm,
    epochs: TrainEpochs = TRAIN.epochs,
    batch_size: Annotated[int, FitOpt(help="Images per training step.")] = TRAIN.batch_size,
    lr: Annotated[float, FitOpt(help="Adam learning rate.")] = TRAIN.lr,
    weight_decay: TrainWeightDecay = TRAIN.weight_decay,
    label_smoothing: TrainLabelSmoothing = TRAIN.label_smoothing,
    class_weight: TrainClassWeight = TRAIN.class_weight,
    monitor: TrainMonitor = TRAIN.monitor,
    patience: TrainPatience = TRAIN.patience,
    seed: Annotated[int, FitOpt(help="Seeded runs are repeatable.")] = TRAIN.seed,
    fine_tune_epochs: TrainFineTuneEpochs = TRAIN.fine_tune_epochs,
    fine_tune_lr: TrainFineTuneLr = TRAIN.fine_tune_lr,
    fine_tune_schedule: TrainFineTuneSchedule = TRAIN.fine_tune_schedule,
    fine_tune_from: TrainFineTuneFrom = None,
    positive_class: TrainPositiveClass = TRAIN.positive_class,
    operating_point: TrainOperatingPoint = TRAIN.operating_point,
    score_calibration: TrainScoreCalibration = TRAIN.score_calibration,
    tta: TrainTta = TRAIN.tta,
    out: TrainOut = None,
    settings_file: TrainSettingsFile = None,
    strategy: TrainStrategy = TRAIN.strategy,
    resume: TrainResume = False,
    wait: TrainWait = False,
    quiet: Annotated[bool, RunOpt(help="No progress output.")] = False,
    json_output: TrainJsonOutput = False,
) -> None:
    """Train a classifier on a frozen ImageNet base (see `toolkit bases`) plus a small new head."""
    from toolkit.tf_setup import import_tensorflow

    import_tensorflow()
    from toolkit.console import print_train_result
    from toolkit.train import train as run_training

    use_progress(quiet or json_output)
    config = _config(ctx, data_dir, _run_folder(out, resume), cache_dir, base_precision, settings_file)
    log = (lambda _m: None) if json_output else typer.echo
    quiet_fit = 0 if quiet or json_output else (1 if sys.stdout.isatty() else 2)  # 2: one line per epoch
    result = run_training(config, resume=resume, log=log, verbose=quiet_fit, explicit=_typed_settings(ctx), wait=wait)
    if json_output:
        return echo_json(result)
    print_train_result(result)


TUNE = TuneOptions()


# `toolkit tune`'s options, one alias each, as train's
TuneDataDir = Annotated[Path, Arg(help="The data folder, as `toolkit train` takes it (test images stay out).")]
TuneOut = Annotated[Path, Opt(help="Run folder: the search goes to OUT/tune (rerun to resume it).")]
TuneTuner = Annotated[TunerKind, Opt(help="bayesian (Gaussian process) or hyperband (early-stopped brackets).")]
TuneMaxTrials = Annotated[int, Opt(min=1, help="Trials at most (a rerun counts the finished ones).")]
TuneTimeBudget = Annotated[
    float | None, Opt(min=1, help="Seconds: no new trial starts after this (per run of the command).")
]
TuneFolds = Annotated[int, Opt(min=1, help="Stratified K-fold CV on the non-test images (1: the validation split).")]
TuneBase = Annotated[str, Opt(help="The frozen network (toolkit bases).")]
TuneBases = Annotated[str | None, Opt(help="Comma-separated bases to search among (each one's features cached once).")]
TuneFineTune = Annotated[
    bool, Opt(help="Search the fine-tuning schedule too (epochs, rate, schedule, cut), on cached cut features.")
]
TuneImageSize = Annotated[int | None, Opt(help="Input size (default: the base's own).")]
TuneWeights = Annotated[str, Opt(help="imagenet, none, or a weights file.")]
TuneValSplit = Annotated[float, Opt(help="Validation share (used by --folds 1).")]
TuneGroups = Annotated[str | None, Opt(help="CSV path,group: a group stays in one fold.")]
TuneGroupPattern = Annotated[str | None, Opt(help="Or a regex on each path naming its group.")]
TuneCacheDir = Annotated[Path | None, Opt(help="Decoded-image cache (default: OUT/tune/cache).")]
TuneSeed = Annotated[int, Opt(help="Seeds the folds, the tuner and each head.")]
TuneWorkers = Annotated[int, Opt(min=0, help="A chief oracle and N worker processes on this machine.")]
TuneOracleHost = Annotated[str, Opt(help="--workers: the chief's address (0.0.0.0: let others join).")]
TuneOraclePort = Annotated[int | None, Opt(help="--workers: the chief's port (default: a free one).")]
TuneChief = Annotated[str | None, Opt(help="HOST:PORT: run as one worker of a chief started elsewhere.")]
TuneJsonOutput = Annotated[bool, Opt("--json", help="Print best.json (no progress output).")]


@user_errors
def tune(
    data_dir: TuneDataDir,
    out: TuneOut,
    tuner: TuneTuner = TUNE.tuner,
    max_trials: TuneMaxTrials = TUNE.max_trials,
    time_budget: TuneTimeBudget = TUNE.time_budget_s,
    folds: TuneFolds = TUNE.folds,
    base: TuneBase = TRAIN.base,
    bases: TuneBases = TUNE.bases,
    fine_tune: TuneFineTune = TUNE.fine_tune,
    image_size: TuneImageSize = TRAIN.image_size,
    weights: TuneWeights = TRAIN.weights,
    val_split: TuneValSplit = TRAIN.val_split,
    groups: TuneGroups = TRAIN.groups,
    group_pattern: TuneGroupPattern = TRAIN.group_pattern,
    cache_dir: TuneCacheDir = None,
    seed: TuneSeed = TRAIN.seed,
    workers: TuneWorkers = TUNE.workers,
    oracle_host: TuneOracleHost = TUNE.oracle_host,
    oracle_port: TuneOraclePort = TUNE.oracle_port,
    chief: TuneChief = TUNE.chief,
    quiet: Annotated[bool, Opt(help="No progress output.")] = False,
    json_output: TuneJsonOutput = False,
) -> None:
    """Search the head's settings and the fine-tuning schedule with Keras Tuner on cached features, scored by K-fold CV;
    `toolkit train --config OUT/tune/best.json` trains the best."""
    from toolkit.tf_setup import import_tensorflow

    import_tensorflow()
    from toolkit.tune import search

    use_progress(quiet or json_output)
    flat = {"data_dir": str(data_dir), "out": str(out), "base": base, "image_size": image_size, "weights": weights,
            "val_split": val_split, "groups": groups, "group_pattern": group_pattern, "seed": seed,
            "cache_dir": str(cache_dir) if cache_dir else None, "augment": False}  # fmt: skip
    config = TrainConfig.from_flat(**flat)
    config.validate()
    searched = [name.strip() for name in bases.split(",") if name.strip()] if bases else None
    for name in searched or []:
        get_base(name)  # an unknown base: one line, before any image is decoded
    options = TuneOptions(tuner=tuner, max_trials=max_trials, time_budget_s=time_budget, folds=folds, workers=workers,
                          oracle_host=oracle_host, oracle_port=oracle_port, chief=chief, bases=searched,
                          fine_tune=fine_tune)  # fmt: skip
    log = (lambda _m: None) if json_output or quiet else typer.echo
    folder = search(config, options, log=log)
    best = folder / "best.json"
    if json_output:
        return echo_json(json.loads(best.read_text()) if best.is_file() else None)
    typer.echo(f"wrote {folder}/trials.csv, trials.png" + (", best.json" if best.is_file() else " (no trial finished)"))
