"""`toolkit train`: its options in the groups TrainConfig keeps them in, each range checked by the library.

The panels (Typer's `rich_help_panel`) are the concerns of `toolkit.train.config`;
no option carries a range here: `TrainConfig.validate` checks each one once and says
what is wrong in one line (exit 2), so the CLI and the library cannot disagree.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated

import typer

from toolkit.bases import base_names, cuts_help
from toolkit.cli_flags import Arg, Opt
from toolkit.console import echo_json, use_progress, user_errors
from toolkit.errors import ToolkitError
from toolkit.hardware import BasePrecision, Strategy
from toolkit.model import Head
from toolkit.train.config import FLAT_NAMES, RUN_FIELDS, ClassWeight, Monitor, Schedule, TrainConfig

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


def _explicit_options(ctx: typer.Context) -> set[str]:
    """The options the user typed (not defaults): `--resume` compares them with the stored config."""
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}


@user_errors
def train(
    ctx: typer.Context,
    data_dir: Annotated[Path, Arg(help="DATA_DIR/train/<class>/ [+ val/] [+ test/], or DATA_DIR/<class>/.")],
    val_split: Annotated[
        float, Opt(help="Validation share carved from train/ (or a flat folder).", rich_help_panel=DATA)
    ] = TRAIN.val_split,
    test_split: Annotated[
        float, Opt(help="Held-out test share of a flat DATA_DIR/<class>/ folder.", rich_help_panel=DATA)
    ] = TRAIN.test_split,
    validate_on_test: Annotated[
        bool,
        Opt(
            help="train/ + test/ only: validate on test/ as the Keras tutorial does (no held-out test).",
            rich_help_panel=DATA,
        ),
    ] = TRAIN.validate_on_test,
    augment: Annotated[
        bool, Opt("--augment/--no-augment", help="Random flip, shift, zoom, rotation.", rich_help_panel=DATA)
    ] = TRAIN.augment,
    aug_views: Annotated[
        int, Opt(help="Precompute K augmented views (0: fresh each epoch).", rich_help_panel=DATA)
    ] = TRAIN.aug_views,
    cache_dir: Annotated[
        Path | None, Opt(help="Decoded-image cache (default RUN_DIR/cache).", rich_help_panel=DATA)
    ] = TRAIN.cache_dir,
    base: Annotated[
        str, Opt(help=f"The frozen network: {', '.join(base_names())} (toolkit bases).", rich_help_panel=BASE)
    ] = TRAIN.base,
    image_size: Annotated[
        int | None, Opt(help="Square image side in pixels (default: the base's own, 224).", rich_help_panel=BASE)
    ] = None,
    weights: Annotated[str, Opt(help="imagenet, none, or a local weights file.", rich_help_panel=BASE)] = TRAIN.weights,
    allow_random_weights: Annotated[
        bool, Opt(help="If no ImageNet weights can be had, train from random weights (loudly).", rich_help_panel=BASE)
    ] = TRAIN.allow_random_weights,
    cache_features: Annotated[
        bool,
        Opt(
            "--cache-features/--no-cache-features",
            help="Run the frozen base once, train the head on its output.",
            rich_help_panel=BASE,
        ),
    ] = TRAIN.cache_features,
    base_precision: Annotated[
        BasePrecision, Opt(help="Compute precision of the cached frozen-base passes.", rich_help_panel=BASE)
    ] = TRAIN.precision,
    head: Annotated[
        Head, Opt(help="flatten (Flatten+Dense) or pooled: gap, gmp, gap+gmp (+Dropout+Dense).", rich_help_panel=HEAD)
    ] = TRAIN.head,
    dropout: Annotated[
        float, Opt(help="Dropout before the pooled heads' Dense layer.", rich_help_panel=HEAD)
    ] = TRAIN.dropout,
    epochs: Annotated[int, Opt(help="Epochs of the frozen-base phase.", rich_help_panel=FIT)] = TRAIN.epochs,
    batch_size: Annotated[int, Opt(help="Images per training step.", rich_help_panel=FIT)] = TRAIN.batch_size,
    lr: Annotated[float, Opt(help="Adam learning rate.", rich_help_panel=FIT)] = TRAIN.lr,
    weight_decay: Annotated[float, Opt(help="AdamW weight decay (0: Adam).", rich_help_panel=FIT)] = TRAIN.weight_decay,
    label_smoothing: Annotated[
        float, Opt(help="Label smoothing of the cross-entropy.", rich_help_panel=FIT)
    ] = TRAIN.label_smoothing,
    class_weight: Annotated[
        ClassWeight, Opt(help="auto: balanced, for imbalanced data.", rich_help_panel=FIT)
    ] = TRAIN.class_weight,
    monitor: Annotated[
        Monitor, Opt(metavar="METRIC", help=f"Picks the best epoch: {', '.join(Monitor)}.", rich_help_panel=FIT)
    ] = TRAIN.monitor,
    patience: Annotated[
        int, Opt(help="Early-stopping patience in epochs (0: off).", rich_help_panel=FIT)
    ] = TRAIN.patience,
    seed: Annotated[int, Opt(help="Seeded runs are repeatable.", rich_help_panel=FIT)] = TRAIN.seed,
    fine_tune_epochs: Annotated[
        int, Opt(help="Epochs with the base above --fine-tune-from unfrozen, afterwards.", rich_help_panel=FINE)
    ] = TRAIN.fine_tune_epochs,
    fine_tune_lr: Annotated[
        float | None, Opt(help="Fine-tuning learning rate (default lr/10).", rich_help_panel=FINE)
    ] = TRAIN.fine_tune_lr,
    fine_tune_schedule: Annotated[
        Schedule, Opt(help="cosine: decay the fine-tuning rate to 0 over its epochs.", rich_help_panel=FINE)
    ] = TRAIN.fine_tune_schedule,
    fine_tune_from: Annotated[
        str | None,
        Opt(
            help=f"Where the unfrozen part starts (default: the base's first cut). {cuts_help()}.", rich_help_panel=FINE
        ),
    ] = None,
    positive_class: Annotated[
        str | None, Opt(help="The finding (AUC etc.; default: the label that sorts second).", rich_help_panel=DECIDE)
    ] = TRAIN.positive_class,
    operating_point: Annotated[
        str | None,
        Opt(help="sensitivity=S, specificity=S or threshold=T, chosen on validation.", rich_help_panel=DECIDE),
    ] = TRAIN.operating_point,
    out: Annotated[Path | None, Opt(help="Run folder (default models/<timestamp>).", rich_help_panel=RUN)] = None,
    strategy: Annotated[Strategy, Opt(help="multiworker reads TF_CONFIG.", rich_help_panel=RUN)] = TRAIN.strategy,
    resume: Annotated[
        bool, Opt(help="Continue an interrupted run in --out (only --epochs may change).", rich_help_panel=RUN)
    ] = False,
    wait: Annotated[
        bool, Opt(help="If another process writes --out, wait for it (default: exit 2).", rich_help_panel=RUN)
    ] = False,
    quiet: Annotated[bool, Opt(help="No progress output.", rich_help_panel=RUN)] = False,
    json_output: Annotated[
        bool, Opt("--json", help="Print the result as JSON (no progress output).", rich_help_panel=RUN)
    ] = False,
) -> None:
    """Train a classifier on a frozen ImageNet base (see `toolkit bases`) plus a small new head."""
    from toolkit.tf_setup import import_tensorflow

    import_tensorflow()
    from toolkit.console import print_train_result
    from toolkit.train import train as run_training

    use_progress(quiet or json_output)
    if out is None:
        if resume:
            raise ToolkitError("--resume needs --out RUN_DIR")
        import datetime

        out = Path("models") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    paths = {"data_dir": str(data_dir), "out": str(out), "cache_dir": str(cache_dir) if cache_dir else None}
    given = {k: (v.value if isinstance(v, Enum) else v) for k, v in ctx.params.items() if k in FLAT}
    config = TrainConfig.from_flat(**{**given, "precision": base_precision.value, **paths})
    explicit = _explicit_options(ctx) - {"out", "resume", "quiet", "json_output", "wait"}
    explicit = {"precision" if name == "base_precision" else name for name in explicit} | {"data_dir"}
    log = (lambda _m: None) if json_output else typer.echo
    quiet_fit = 0 if quiet or json_output else (1 if sys.stdout.isatty() else 2)  # 2: one line per epoch
    result = run_training(config, resume=resume, log=log, verbose=quiet_fit, explicit=explicit, wait=wait)
    if json_output:
        return echo_json(result)
    print_train_result(result)
