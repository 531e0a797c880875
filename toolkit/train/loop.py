"""`train()`: one run from a data folder to a finished run folder, stage by stage.

    prepare the run folder -> decode the data -> build the model -> frozen phase
    -> (fine-tuning phase) -> the saved model's metrics, plots and run.json

Two execution modes produce the same saved model (preprocessing, base, head):
``tutorial`` (`cache_features=False`), the classic Keras recipe with every frozen
forward pass recomputed every epoch, and ``features`` (default), where the base's
output is computed once (see `toolkit.train.features`) and only the head trains.
Fine-tuning trains the blocks from `--fine-tune-from` on, on the cached output of
the last frozen block (or the whole network on images, in tutorial mode). Run folders are resumable: the best
model, history and best-so-far survive a crash or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.card import write_model_card
from toolkit.data import LoadedDataset, load_dataset, write_data_report
from toolkit.data.check import check_dataset
from toolkit.errors import Interrupted, ToolkitError
from toolkit.fileio import folder_lock, remove_stale_temporaries
from toolkit.hardware import is_chief, make_strategy, resolve_precision, tf_config, worker_tag
from toolkit.operating_point import resolve_positive_class
from toolkit.run_folder import (
    BEST,
    CACHE_DIR,
    DATA_REPORT,
    HISTORY,
    STATE,
    TrainState,
    read_history_csv,
)
from toolkit.tf_setup import import_tensorflow
from toolkit.train.config import TrainConfig, TrainResult
from toolkit.train.cut import (
    cached_finetune_data,
    cut_folder,
    cut_stores,
    frozen_features_from_cut,
    shares_cut_features,
)
from toolkit.train.features import (
    FeatureSource,
    extract_features,
    plain_feature_dataset,
    standardise_head,
    training_features,
)
from toolkit.train.finish import RunFacts, final_metrics, make_result, write_run_json
from toolkit.train.fit import (
    FitContext,
    Phase,
    class_weights,
    compile_model,
    cosine_schedule,
    fit_phase,
    image_dataset,
)
from toolkit.train.resume import prepare_run_dir


def load_training_data(config: TrainConfig, cache_dir: Path, log) -> LoadedDataset:
    data = load_dataset(config.data.folder, config.base.image_size, config.split_options(), cache_dir)
    test = f" / {len(data.test)} test" if data.test is not None else " (no test split)"
    log(
        f"data: {len(data.train)} train / {len(data.val)} validation{test} images, {len(data.classes)} classes "
        f"({', '.join(data.classes)}); {len(data.report.skipped)} files skipped (see data_report.json)"
    )
    log(f"validation (selects the best epoch and the threshold): {data.split.val_source}")
    if len(data.classes) == 2:
        positive = resolve_positive_class(data.classes, config.decision.positive_class)
        how = "--positive-class" if config.decision.positive_class else "default: the label that sorts second"
        log(f"positive class: {positive} ({how})")
    return data


def build_model(config: TrainConfig, strategy, num_classes: int, log: Callable[[str], None]):
    """The classifier under the strategy's scope; returns (model, WeightsInfo, warnings)."""
    import keras

    from toolkit.keras_io import count_params
    from toolkit.model import build_classifier
    from toolkit.weights import WeightsRequest

    keras.utils.set_random_seed(config.optim.seed)
    request = WeightsRequest(config.base.weights, config.base.allow_random_weights, log)
    with strategy.scope():
        model, weights_info = build_classifier(
            num_classes,
            config.base.image_size,
            request,
            config.head.kind,
            config.head.dropout,
            config.base.name,
            config.head.normalize,
        )
    warnings = []
    if weights_info.warning:
        warnings.append(f"WARNING: {weights_info.warning}; training with RANDOM weights")
        log(warnings[-1])
    total, trainable = count_params(model)
    log(
        f"model: {config.base.name} base ({_weights_line(weights_info)}) + {config.head.kind} head; "
        f"{total:,} parameters, {trainable:,} trainable"
    )
    return model, weights_info, warnings


def _weights_line(info) -> str:
    """The weights actually used, as the console names them (a derived file is never called ImageNet)."""
    if info.provenance:
        return f"{info.source} weights, {info.path}, sha256 {info.provenance['file_sha256'][:12]}"
    return f"{info.source} weights"


def frozen_phase(ctx: FitContext, data: LoadedDataset, precision: str, augmenter, features_dir: Path):
    """Train the head on a frozen base; returns the float32 validation features (or None)."""
    from toolkit.model import feature_norm, features_part, head_part

    config, num_classes = ctx.config, len(data.classes)
    t0 = time.perf_counter()
    if not config.base.cache_features:
        with ctx.strategy.scope():
            compile_model(ctx.model, config.optim.lr, config)
        train_ds = image_dataset(data.train, num_classes, config.optim.batch_size, True, config.optim.seed, augmenter)
        val_ds = image_dataset(data.val, num_classes, config.optim.batch_size, False, config.optim.seed)
        if feature_norm(head_part(ctx.model)) is not None:  # one extra pass: the head's inputs have no cache here
            path = features_dir / "features-train-statistics.npy"
            feats = extract_features(
                features_part(ctx.model), data.train.images, path, config.optim.batch_size, np.float16, "statistics"
            )
            standardise_head(head_part(ctx.model), [feats], config.optim.batch_size, ctx.log)
        fit_phase(
            ctx,
            Phase("frozen", ctx.model, train_ds, val_ds, ctx.state.completed_epochs, config.optim.epochs),
            len(data.train),
        )
        ctx.timings["frozen_phase_s"] = time.perf_counter() - t0
        return None
    with ctx.strategy.scope():
        head = head_part(ctx.model)
        compile_model(head, config.optim.lr, config)
    if shares_cut_features(ctx, augmenter):  # blocks 1-4 once for both phases
        folder = cut_folder(ctx, features_dir)
        stores = cut_stores(ctx, data, augmenter, precision, folder)
        train_ds, val_feats, views = frozen_features_from_cut(ctx, data, stores, folder)
        callbacks, rows = [], lambda epoch: list(views)
    else:
        train_ds, val_feats, callbacks, rows = _frozen_features(ctx, data, precision, augmenter, features_dir)
    if feature_norm(head) is not None:
        standardise_head(head, rows(ctx.state.completed_epochs), config.optim.batch_size, ctx.log)
    val_ds = plain_feature_dataset(val_feats, data.val.labels, num_classes, config.optim.batch_size)
    if config.data.aug_views and augmenter is not None:
        ctx.log(f"precomputed {config.data.aug_views} augmented views of {len(data.train)} training images")
    ctx.timings["feature_extraction_s"] = time.perf_counter() - t0
    phase = Phase("frozen", head, train_ds, val_ds, ctx.state.completed_epochs, config.optim.epochs, callbacks)
    fit_phase(ctx, phase, len(data.train))
    ctx.timings["frozen_phase_s"] = time.perf_counter() - t0
    return val_feats


def _frozen_features(ctx: FitContext, data: LoadedDataset, precision: str, augmenter, features_dir: Path):
    """(training dataset, float32 validation features, callbacks, rows) of the head's input, from images."""
    from toolkit.model import build_feature_extractor, features_part

    config, num_classes = ctx.config, len(data.classes)
    # Validation runs the float32 base whatever --precision says: epochs are then
    # judged (and the best one picked) on exactly what the saved model computes.
    val_path = features_dir / "features-val.npy"
    val_feats = extract_features(
        features_part(ctx.model), data.val.images, val_path, config.optim.batch_size, np.float32, "validation features"
    )
    feature_shape = tuple(features_part(ctx.model).output.shape[1:])
    source = FeatureSource(
        data.train, num_classes, config.optim.batch_size, config.optim.seed, feature_shape, features_dir
    )
    extractor = build_feature_extractor(ctx.model, precision)
    # The multi-worker loop opens each epoch's iterator after the callbacks itself, and its
    # repeated, sharded dataset reads a varying number of batches per epoch.
    strict = config.strategy != "multiworker"
    train_ds, callbacks, rows = training_features(extractor, source, augmenter, config.data.aug_views, strict)
    return train_ds, val_feats, callbacks, rows


def finetune_phase(ctx: FitContext, data: LoadedDataset, augmenter, precision: str, features_dir: Path) -> None:
    """Unfreeze `--fine-tune-from` onwards and train from the best frozen-phase checkpoint.

    With cached features (the default) the frozen blocks below the cut run once per
    stored view, like the frozen phase, and each epoch costs only the unfrozen
    blocks' forward and backward passes; `--no-cache-features` trains the whole
    network on images every step, as the tutorial does.
    """
    from toolkit.keras_io import load_keras_model
    from toolkit.model import unfreeze_for_fine_tuning
    from toolkit.train.fit import set_compute_precision

    config = ctx.config
    t0 = time.perf_counter()
    if (ctx.run_dir / BEST).is_file() and ctx.state.completed_epochs <= config.optim.epochs:
        ctx.model.set_weights(load_keras_model(ctx.run_dir / BEST).get_weights())
    lr = config.fine_tune.lr or config.optim.lr / 10
    with ctx.strategy.scope():
        unfrozen = unfreeze_for_fine_tuning(ctx.model, config.fine_tune.cut)
    how = "on cached features" if config.base.cache_features else "on images (whole network every step)"
    ctx.log(f"fine-tuning {how}: {unfrozen} layers from {config.fine_tune.cut} unfrozen, learning rate {lr:g}")
    if config.base.cache_features:
        model, train_ds, val_ds, callbacks = cached_finetune_data(ctx, data, augmenter, precision, features_dir)
        _fine_tune_in(ctx, precision)
    else:
        model, callbacks = ctx.model, []
        train_ds = image_dataset(
            data.train, len(data.classes), config.optim.batch_size, True, config.optim.seed, augmenter
        )
        val_ds = image_dataset(data.val, len(data.classes), config.optim.batch_size, False, config.optim.seed)
    with ctx.strategy.scope():
        compile_model(model, lr, config)
    if config.fine_tune.schedule == "cosine":
        callbacks = [*callbacks, cosine_schedule(lr, config.optim.epochs, config.fine_tune.epochs)]
    start = max(ctx.state.completed_epochs, config.optim.epochs)
    t1 = time.perf_counter()
    end = config.optim.epochs + config.fine_tune.epochs
    try:
        fit_phase(ctx, Phase("finetune", model, train_ds, val_ds, start, end, callbacks), len(data.train))
    finally:
        set_compute_precision(ctx.mixed_layers, "fp32")  # the classifier evaluates and exports in float32
        ctx.mixed_layers = []
    ctx.timings["fine_tune_phase_s"] = time.perf_counter() - t0
    ctx.timings["fine_tune_epoch_s"] = (time.perf_counter() - t1) / max(1, end - start)


def _fine_tune_in(ctx: FitContext, precision: str) -> None:
    """bf16 (mixed: float32 weights) for the unfrozen blocks where the frozen passes run bf16; else float32.

    The head stays float32, as mixed-precision guides keep the final layers, so the
    loss and the probabilities are computed in float32. fp16 fine-tunes in float32:
    it would need loss scaling, and the CPUs that run fp16 natively run bf16 too.
    """
    from toolkit.model import fine_tuned_base_layers
    from toolkit.train.fit import set_compute_precision

    ctx.fine_tune_precision = "bf16" if precision == "bf16" else "fp32"
    if ctx.fine_tune_precision == "bf16":
        ctx.mixed_layers = fine_tuned_base_layers(ctx.model, ctx.config.fine_tune.cut)
        set_compute_precision(ctx.mixed_layers, "bf16")
    ctx.log(f"fine-tuning precision: {ctx.fine_tune_precision}" + (" (mixed: float32 weights)" * (precision == "bf16")))


def _context(config: TrainConfig, run_dir: Path, chief: bool, data: LoadedDataset, resume: bool, log, verbose):
    """Strategy, model and the state the phases share; returns (FitContext, WeightsInfo, precision, warnings)."""
    import_tensorflow()
    strategy = make_strategy(config.strategy)
    model, weights_info, warnings = build_model(config, strategy, len(data.classes), log)
    precision = resolve_precision(config.base.precision) if config.base.cache_features else "fp32"
    if config.base.cache_features:
        log(f"frozen-base precision: {precision}" + (" (auto)" if config.base.precision == "auto" else ""))
    state = TrainState.load(run_dir / STATE) if resume else TrainState()
    history = read_history_csv(run_dir / HISTORY) if resume else []
    class_weight = class_weights(config.optim.class_weight, data.train.labels, len(data.classes))
    if class_weight:
        weights = ", ".join(f"{name} {class_weight[i]:.2f}" for i, name in enumerate(data.classes))
        log(f"class weights (balanced: each class weighs as much as the others in the loss): {weights}")
    ctx = FitContext(config, run_dir, chief, strategy, model, state, history, class_weight, verbose, log)
    return ctx, weights_info, precision, warnings


def train(
    config: TrainConfig,
    resume: bool = False,
    log: Callable[[str], None] = print,
    verbose: int = 1,
    explicit: set[str] | None = None,
    wait: bool = False,
) -> TrainResult:
    """Train, checkpoint and evaluate one run; write its self-contained folder.

    With `resume`, `explicit` names the settings the user gave (the command line's typed
    flags); any that differ from the stored config are refused. None: every field of `config`.
    The run folder has one writer at a time (`fileio.folder_lock`; `wait` waits for the
    holder); a start that fails before training removes the folder it created.
    """
    config.validate()
    cluster = tf_config() if config.strategy == "multiworker" else {}  # a stray TF_CONFIG changes nothing else
    chief = is_chief(cluster)
    run_dir = Path(config.out)
    fresh = not resume and not run_dir.exists()
    # Only the chief writes the run folder's files, so only it holds the lock (workers may share --out).
    with folder_lock(run_dir, wait) if chief else contextlib.nullcontext():
        try:
            started = _start(config, resume, chief, explicit, cluster, log, verbose)
        except ToolkitError as exc:
            if fresh and chief and not isinstance(exc, Interrupted):
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing of this run is worth keeping yet
            raise
        return _train_started(started, cluster)


@dataclasses.dataclass
class _Started:
    config: TrainConfig
    ctx: FitContext
    data: LoadedDataset
    cache_dir: Path
    weights_info: object
    precision: str
    warnings: list[str]
    start: float


def _start(config, resume, chief, explicit, cluster, log, verbose) -> _Started:
    """Everything before the first epoch: the folder, config.json, the data, the model."""
    start = time.perf_counter()
    run_dir, config = prepare_run_dir(config, resume, chief, explicit)
    if chief:
        remove_stale_temporaries(run_dir)
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else run_dir / CACHE_DIR
    data = load_training_data(config, cache_dir, log)
    found = []
    if chief:
        check = check_dataset(config.data.folder, config.split_options())
        write_data_report(data.report, run_dir / DATA_REPORT, check.to_json())
        found = check.warnings
        for warning in found:
            log(f"data check: {warning} (data_report.json: check)")
    ctx, weights_info, precision, warnings = _context(config, run_dir, chief, data, resume, log, verbose)
    return _Started(config, ctx, data, cache_dir, weights_info, precision, [*found, *warnings], start)


def _train_started(s: _Started, cluster: dict) -> TrainResult:
    from toolkit.data.augment import RandomAffine
    from toolkit.data.registration import choose_augmentation
    from toolkit.keras_io import count_params

    config, ctx, data = s.config, s.ctx, s.data
    augmentation = choose_augmentation(config.data.augment, config.data.aug_views, data.train.images)
    ctx.log(augmentation.describe())
    augmenter = RandomAffine(config.optim.seed) if augmentation.used else None
    val_feats = None
    # Every worker computes its own features (its own augmentations): workers sharing
    # one --out must not write one another's feature files.
    features_dir = s.cache_dir / "features" / worker_tag(cluster) if cluster else s.cache_dir
    if ctx.state.phase == "frozen":
        val_feats = frozen_phase(ctx, data, s.precision, augmenter, features_dir)
        _next_phase(ctx, "finetune" if config.fine_tune.epochs else "done")
    if ctx.state.phase == "finetune":
        finetune_phase(ctx, data, augmenter, s.precision, features_dir)
        _next_phase(ctx, "done")
    replicas = ctx.strategy.num_replicas_in_sync
    facts = RunFacts(data.report, s.weights_info, s.precision, count_params(ctx.model), replicas, augmentation)
    if not ctx.chief:
        # Non-chief workers trained in lockstep; the chief evaluates and writes the run folder.
        return make_result(ctx, facts, None, time.perf_counter() - s.start)
    evaluation = final_metrics(ctx, data, None if config.fine_tune.epochs else val_feats)
    result = make_result(ctx, facts, evaluation, time.perf_counter() - s.start)
    result.warnings = s.warnings
    write_run_json(ctx, facts, result)
    write_model_card(ctx.run_dir)
    return result


def _next_phase(ctx: FitContext, phase: str) -> None:
    ctx.state.phase = phase
    if ctx.chief:
        ctx.state.save(ctx.run_dir / STATE)
