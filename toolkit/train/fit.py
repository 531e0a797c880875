"""Fitting: compile, callbacks (history and best checkpoint after every epoch), and one `fit_phase`.

A phase is one call of Keras's `fit` (or the multi-worker loop) over the frozen
head or the fine-tuned model; the callbacks keep the run folder resumable after
every epoch, whatever happens next.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data import ImageArrays
from toolkit.errors import Interrupted, TrainingError
from toolkit.run_folder import BEST, HISTORY, STATE, TrainState, save_model_atomic, write_history_csv
from toolkit.tf_setup import import_tensorflow
from toolkit.train.config import TrainConfig
from toolkit.train.features import distribute_options

MIXED_POLICIES = {"bf16": "mixed_bfloat16"}  # fine-tuning precisions: float32 weights, bf16 compute


def set_compute_precision(layers, precision: str) -> None:
    """Make `layers` compute in `precision` ("fp32", or "bf16": mixed_bfloat16), their float32 weights kept.

    Keras 3 casts a layer's float32 variables and floating inputs to its compute dtype
    on every call, so the same variables train in bf16 on AMX/AVX512_BF16 and the
    optimizer updates them in float32; bf16 keeps float32's exponent range, so no loss
    scaling is needed. Saving must see "fp32" again (`FitContext.save_best`).
    """
    policy = MIXED_POLICIES.get(precision, "float32")
    for layer in layers:
        layer.dtype_policy = policy


@dataclasses.dataclass
class FitContext:
    """Everything that stays the same across a run's phases."""

    config: TrainConfig
    run_dir: Path
    chief: bool
    strategy: Any
    model: Any  # the full classifier, whose best version is checkpointed
    state: TrainState
    history: list[dict]
    class_weight: dict[int, float] | None
    verbose: int
    log: Callable[[str], None] = print
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    stores: dict[str, Any] = dataclasses.field(default_factory=dict)  # feature stores shared across phases
    mixed_layers: list = dataclasses.field(default_factory=list)  # computing in bf16 now; saved as float32
    fine_tune_precision: str | None = None  # what fine-tuning computed in (run.json)

    def save_best(self) -> None:
        """Checkpoint the classifier; layers fine-tuning in bf16 are saved as the float32 layers they are."""
        set_compute_precision(self.mixed_layers, "fp32")
        try:
            save_model_atomic(self.model, self.run_dir / BEST)
        finally:
            set_compute_precision(self.mixed_layers, "bf16")

    @property
    def backup_root(self) -> Path:
        """Where BackupAndRestore keeps mid-epoch state: in the run folder for the chief only."""
        if self.chief:
            return self.run_dir / ".resume"
        return Path(tempfile.mkdtemp(prefix="toolkit-worker-"))


def image_dataset(arrays: ImageArrays, num_classes: int, batch_size: int, shuffle: bool, seed: int, augmenter=None):
    """Batches of (float32 pixels, one-hot labels) read from the decoded-pixel cache.

    For training the whole model (tutorial mode, fine-tuning). Images are gathered
    from the (memory-mapped) cache batch by batch, so the data set never has to fit
    in memory and nothing is decoded again; batches are prepared in parallel and
    prefetched while the previous step trains.
    """
    tf = import_tensorflow()
    images, labels = arrays.images, arrays.labels
    n = len(labels)
    h, w = images.shape[1:3]

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(images[np.sort(idx)], dtype=np.uint8), labels[np.sort(idx)].astype(np.int64)

    def load(idx):
        x, y = tf.numpy_function(gather, [idx], (tf.uint8, tf.int64), stateful=False)
        x.set_shape((None, h, w, 3))
        y.set_shape((None,))
        return tf.cast(x, tf.float32), tf.one_hot(y, num_classes)

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if augmenter is not None:
        ds = ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(distribute_options(tf))


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return {i: float(len(labels) / (num_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def class_weights(setting: str, labels: np.ndarray, num_classes: int) -> dict[int, float] | None:
    """The loss's class weights for `--class-weight` (see `ClassWeight`): balanced or None."""
    if setting == "balanced" or (setting == "auto" and num_classes > 2):
        return balanced_class_weights(labels, num_classes)
    return None


def compile_model(model, lr: float, config: TrainConfig | None = None) -> None:
    """Adam (AdamW with `config.optim.weight_decay`), cross-entropy (with `config.optim.label_smoothing`), the logged metrics."""
    import keras

    decay = config.optim.weight_decay if config else 0.0
    smoothing = config.optim.label_smoothing if config else 0.0
    optimizer = keras.optimizers.AdamW(lr, weight_decay=decay) if decay else keras.optimizers.Adam(lr)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ],
    )


def cosine_schedule(lr: float, first_epoch: int, epochs: int):
    """A callback setting epoch e's rate to lr * (1 + cos(pi * (e - first) / epochs)) / 2.

    Per epoch, by the absolute epoch number Keras passes, so a resumed run picks up the
    same rate it would have had; the last epoch trains at a small but non-zero rate.
    """
    import math

    import keras

    def rate(epoch: int, _current: float) -> float:
        done = min(max(epoch - first_epoch, 0), epochs)
        return float(lr * 0.5 * (1.0 + math.cos(math.pi * done / epochs)))

    return keras.callbacks.LearningRateScheduler(rate)


def monitor_mode(monitor: str) -> str:
    return "min" if "loss" in monitor else "max"


def improved(value: float | None, best: float | None, mode: str) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def make_run_callback(ctx: FitContext):
    """History rows and the best full model, both written atomically after every epoch."""
    import keras

    monitor = ctx.config.optim.monitor
    mode = monitor_mode(monitor)
    state, history = ctx.state, ctx.history

    class RunCallback(keras.callbacks.Callback):
        diverged = False
        missing_monitor = False

        def on_epoch_begin(self, epoch, logs=None):
            # After a restart the interrupted epoch runs again: drop its stale row.
            history[:] = [row for row in history if row["epoch"] < epoch + 1]

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            row = {"epoch": epoch + 1, "phase": state.phase, **{k: float(v) for k, v in logs.items()}}
            history.append(row)
            if any(isinstance(v, float) and math.isnan(v) for k, v in row.items() if k.endswith("loss")):
                self.diverged = True
                return
            value = logs.get(monitor)
            if value is None:
                self.missing_monitor = True
            state.completed_epochs = epoch + 1
            if ctx.chief:
                if improved(value, state.best_value, mode):
                    ctx.save_best()
                    state.best_value, state.best_epoch = float(value), epoch + 1
                write_history_csv(history, ctx.run_dir / HISTORY)
                state.save(ctx.run_dir / STATE)

    return RunCallback()


@dataclasses.dataclass
class Phase:
    """One `fit` call: which model, on what data, for which epochs."""

    name: str  # "frozen" or "finetune"
    model: Any
    train_ds: Any
    val_data: Any
    initial_epoch: int
    epochs: int
    data_callbacks: list = dataclasses.field(default_factory=list)


def _callbacks(ctx: FitContext, phase: Phase, run_cb) -> list:
    import keras

    callbacks = [*phase.data_callbacks, run_cb, keras.callbacks.TerminateOnNaN()]
    if ctx.config.optim.patience:
        monitor = ctx.config.optim.monitor
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, patience=ctx.config.optim.patience, mode=monitor_mode(monitor)
            )
        )
    callbacks.append(keras.callbacks.BackupAndRestore(str(ctx.backup_root / phase.name)))
    return callbacks


def fit_phase(ctx: FitContext, phase: Phase, num_examples: int) -> None:
    """Run one phase; Ctrl-C, divergence and a missing monitor become one-line errors."""
    run_cb = make_run_callback(ctx)
    callbacks = _callbacks(ctx, phase, run_cb)
    config = ctx.config
    try:
        if config.strategy == "multiworker":
            from toolkit.train.distributed import LoopPlan, fit_multiworker

            plan = LoopPlan(num_examples, config.optim.batch_size, phase.epochs, phase.initial_epoch, ctx.class_weight)
            fit_multiworker(phase.model, ctx.strategy, phase.train_ds, phase.val_data, callbacks, plan)
        else:
            warnings.filterwarnings("ignore", message=".*shuffle=True.*tf.data.Dataset.*")
            phase.model.fit(
                phase.train_ds,
                validation_data=phase.val_data,
                epochs=phase.epochs,
                initial_epoch=phase.initial_epoch,
                class_weight=ctx.class_weight,
                callbacks=callbacks,
                verbose=ctx.verbose,
            )
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; finished epochs are saved in {ctx.run_dir}: continue with "
            f"`toolkit train {config.data.folder} --out {ctx.run_dir} --resume`"
        ) from None
    if run_cb.diverged:
        raise TrainingError(
            "training diverged (loss became NaN); lower --lr or check the data. The best model so far is kept."
        )
    if run_cb.missing_monitor:
        raise TrainingError(f"--monitor {config.optim.monitor} is not a logged metric; try val_loss or val_accuracy")
