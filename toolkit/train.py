"""Transfer-learning training: a frozen VGG16 base plus a small trainable head.

Two execution modes produce the same saved model (preprocessing, base, head):

* ``tutorial`` (`cache_features=False`): the classic Keras recipe, every frozen
  forward pass recomputed every epoch, validation included.
* ``features`` (default): the frozen base never changes, so its output is
  computed once for validation and, for training, once (no augmentation), once
  per augmented view (`aug_views=K`), or freshly each epoch (augmentation with
  `aug_views=0`); only the head trains. Fine-tuning always runs the full model.

Run folders are self-contained and resumable: the best model, history and
best-so-far survive a crash or Ctrl-C, and `resume=True` continues from the
last finished epoch.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
import warnings as warnings_module
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import __version__
from toolkit.data import ImageArrays, load_dataset, write_data_report
from toolkit.errors import DatasetError, Interrupted, TrainingError
from toolkit.fileio import atomic_path, write_json_atomic, write_text_atomic
from toolkit.metrics import classification_metrics, plot_confusion

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STRATEGIES = ("default", "mirrored", "multiworker")
METRIC_NAMES = ("loss", "accuracy", "auc", "precision", "recall")


@dataclasses.dataclass
class TrainConfig:
    data_dir: str
    out: str
    image_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    val_split: float = 0.2
    augment: bool = True
    aug_views: int = 0
    cache_features: bool = True
    precision: str = "auto"
    head: str = "flatten"
    dropout: float = 0.3
    weights: str = "imagenet"
    allow_random_weights: bool = False
    monitor: str = "val_loss"
    patience: int = 0
    class_weight: str = "none"  # "none" or "auto"
    fine_tune_epochs: int = 0
    fine_tune_lr: float | None = None
    strategy: str = "default"
    cache_dir: str | None = None

    def validate(self) -> None:
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
            raise DatasetError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.strategy not in STRATEGIES:
            raise DatasetError(f"--strategy must be one of {', '.join(STRATEGIES)}")
        if self.class_weight not in ("none", "auto"):
            raise DatasetError("--class-weight must be none or auto")
        if self.fine_tune_epochs < 0:
            raise DatasetError("--fine-tune-epochs must be 0 or more")

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
    weights_source: str
    precision: str
    mode: str
    seconds: float
    warnings: list[str]


@dataclasses.dataclass
class TrainState:
    """What must survive a restart: the phase and the best-so-far."""

    phase: str = "frozen"  # frozen -> finetune -> done
    best_value: float | None = None
    best_epoch: int | None = None
    completed_epochs: int = 0

    @classmethod
    def load(cls, path: Path) -> TrainState:
        if path.is_file():
            return cls(**json.loads(path.read_text()))
        return cls()

    def save(self, path: Path) -> None:
        write_json_atomic(path, self)


# --------------------------------------------------------------------------- helpers


def configure_tensorflow_logging() -> None:
    """Silence TF's C++ start-up noise; must run before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def _tf():
    from toolkit.tf_setup import import_tensorflow

    configure_tensorflow_logging()
    return import_tensorflow()


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    return json.loads(raw) if raw else {}


def is_chief() -> bool:
    """True unless TF_CONFIG names this process a non-chief multi-worker task."""
    config = _tf_config()
    if not config:
        return True
    task, cluster = config.get("task", {}), config.get("cluster", {})
    if task.get("type") == "chief":
        return True
    if "chief" in cluster:
        return False
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def worker_tag() -> str:
    """ "type-index" of this TF_CONFIG task ("" outside multi-worker), to keep per-worker files apart."""
    config = _tf_config()
    if not config:
        return ""
    task = config.get("task", {})
    return f"{task.get('type', 'worker')}-{int(task.get('index', 0))}"


def make_strategy(name: str):
    tf = _tf()
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        # No GPU: mirror over every logical CPU device (one unless configured otherwise).
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise DatasetError("--strategy multiworker reads TF_CONFIG, which is not set")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str) -> str:
    """`auto` -> bf16 where the hardware runs it natively (AVX512_BF16/AMX CPUs, bf16 GPUs), else fp32."""
    if requested != "auto":
        return requested
    tf = _tf()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        major = (details.get("compute_capability") or (0, 0))[0]
        return "bf16" if major >= 8 else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


def make_augmenter(seed: int):
    """Random flip, shift, zoom and rotation (one affine warp), applied to training images only."""
    from toolkit.augment import RandomAffine

    return RandomAffine(seed)


def _distribute_options(tf):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def _feature_options(tf):
    """Options for the head's feature batches: no autotuning, no background work.

    A batch of stored features is gathered in milliseconds, so prefetching gains
    nothing, while tf.data's autotuning and prefetch threads wake up during the
    base's forward passes and preempt one of oneDNN's two threads (here: 4-6%
    slower passes in the plain per-epoch mode), and dropping a prefetching
    iterator at an epoch's start stalled it for up to 3 s.
    """
    options = _distribute_options(tf)
    options.autotune.enabled = False
    return options


def image_dataset(
    arrays: ImageArrays,
    num_classes: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    augmenter=None,
):
    """Batches of (float32 pixels, one-hot labels) read from the decoded-pixel cache.

    For training the whole model (tutorial mode, fine-tuning). Images are gathered
    from the (memory-mapped) cache batch by batch, so the data set never has to fit
    in memory and nothing is decoded again; batches are prepared in parallel and
    prefetched while the previous step trains.
    """
    tf = _tf()
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
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_distribute_options(tf))


def build_feature_extractor(model, precision: str):
    """The frozen `features` sub-model, rebuilt in bf16/fp16 compute when asked.

    Only the base's convolutions change precision; preprocessing runs in
    float32 and the output is cast back, so the head sees float32 features.
    """
    import keras

    from toolkit.model import caffe_preprocess_layer, features_part, vgg_base

    features = features_part(model)
    if precision == "fp32":
        return features
    policy = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision]
    base = vgg_base(model)
    image_shape = tuple(features.input.shape[1:])
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        low = keras.applications.VGG16(include_top=False, weights=None, input_shape=image_shape)
    finally:
        keras.config.set_dtype_policy(previous)
    low.set_weights(base.get_weights())
    image = keras.Input(image_shape, name="image")
    x = caffe_preprocess_layer(dtype="float32")(image)
    x = low(x, training=False)
    x = keras.ops.cast(x, "float32")
    return keras.Model(image, x, name=f"features_{precision}")


def compile_forward(extractor, augmenter=None):
    """The frozen extractor as one traced function of a uint8 batch, augmentation fused in.

    Extraction calls it from the main thread on plain numpy batches, with no tf.data
    pipeline: the convolutions already keep every core busy, and a prefetching
    pipeline preempting one of oneDNN's threads made each pass up to 18% slower here.
    One signature with any batch size: a last, smaller batch does not retrace it.
    """
    tf = _tf()

    def forward(images):
        x = tf.cast(images, tf.float32)
        if augmenter is not None:
            x = augmenter(x, training=True)
        return extractor(x, training=False)

    signature = [tf.TensorSpec((None, *extractor.input.shape[1:]), tf.uint8)]
    return tf.function(forward, input_signature=signature)


def open_feature_store(path: Path, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A writable memmap for features, its folder created (float16 for training, float32 for validation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def extract_into(forward, images: np.ndarray, store: np.ndarray, batch_size: int) -> int:
    """Fill `store` (often a memmap) with the features of `images` (often a memmap), in order."""
    if len(store) != len(images):
        raise TrainingError(f"feature store holds {len(store)} rows for {len(images)} images")
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype=np.uint8)
        store[start : start + len(batch)] = forward(batch).numpy().astype(store.dtype, copy=False)
    return len(images)


def extract_features(
    extractor,
    images: np.ndarray,
    out_path: Path,
    feature_shape: tuple[int, ...],
    batch_size: int,
    dtype=np.float16,
) -> np.ndarray:
    """Run the frozen extractor over `images` once; store its features in a memmap.

    float16 storage is plenty for training features (7x7x512 per image at 224 px)
    and halves their footprint; validation features are kept in float32.
    """
    store = open_feature_store(out_path, (len(images), *feature_shape), dtype)
    extract_into(compile_forward(extractor), images, store, batch_size)
    store.flush()
    return np.load(out_path, mmap_mode="r", allow_pickle=False)


def _feature_batches(gather, n: int, feature_shape, num_classes: int, batch_size: int, seed: int):
    """Shuffled batches of (float32 features, one-hot labels), each fetched by `gather(indices)`."""
    tf = _tf()

    def load(idx):
        x, y = tf.numpy_function(gather, [idx], (tf.float32, tf.int64), stateful=True)
        x.set_shape((None, *feature_shape))
        y.set_shape((None,))
        return x, tf.one_hot(y, num_classes)

    ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return ds.map(load).with_options(_feature_options(tf))


def feature_views_dataset(views: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int, seed: int):
    """Each epoch draws one of the K stored augmented views of every image."""
    k, n = views.shape[:2]
    rng = np.random.default_rng(seed)

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chosen = rng.integers(0, k, size=len(idx))
        return np.asarray(views[chosen, idx], dtype=np.float32), labels[idx].astype(np.int64)

    return _feature_batches(gather, n, views.shape[2:], num_classes, batch_size, seed)


class EpochFeatures:
    """Features of a fresh augmented pass over the training images, recomputed before each epoch.

    The plain per-epoch mode (augmentation, `aug_views=0`) costs one base pass per
    image per epoch by definition. Here that pass runs alone and synchronously, at
    the start of the epoch, exactly like the one-off extraction (`forward` is
    `compile_forward(extractor, augmenter)`), rather than inside a tf.data map
    competing with the training loop for the cores (see `compile_forward`).

    The head's dataset reads the buffer lazily, so nothing may read it ahead of
    `refresh`. Keras opens the next epoch's iterator at the end of the previous
    epoch, but tf.data starts reading (shuffle, then map) only at the first
    `next()`, which comes after `on_epoch_begin`; the dataset has no prefetch. Reads are counted all the same:
    with `strict`, a batch read while the buffer is being rewritten, or more batches
    in an epoch than it has, means a batch was fetched ahead for the next epoch and
    would train on stale features; that raises rather than passing silently, should
    Keras or tf.data ever start reading earlier.
    """

    def __init__(
        self,
        forward,
        arrays: ImageArrays,
        num_classes: int,
        batch_size: int,
        seed: int,
        path: Path,
        feature_shape: tuple[int, ...],
        strict: bool = True,
    ) -> None:
        import threading

        self.forward, self.arrays = forward, arrays
        self.num_classes, self.batch_size, self.seed, self.strict = num_classes, batch_size, seed, strict
        self.feature_shape = feature_shape
        self.store = open_feature_store(path, (len(arrays), *feature_shape), np.float16)
        self.batches_per_epoch = math.ceil(len(arrays) / batch_size)
        self.epoch: int | None = None  # whose features the buffer holds
        self.reads = 0
        self.refreshing = False
        self._lock = threading.Lock()

    def refresh(self, epoch: int) -> None:
        """Recompute the buffer for `epoch` before any of its batches is read."""
        self.check_reads()
        with self._lock:
            self.refreshing = True
        extract_into(self.forward, self.arrays.images, self.store, self.batch_size)
        with self._lock:
            self.refreshing, self.epoch, self.reads = False, epoch, 0

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(idx)
        with self._lock:
            if self.refreshing:
                self.reads = -1  # poisoned: a batch was read while the buffer was half rewritten
            elif self.epoch is not None and self.reads >= 0:
                self.reads += 1
            return np.asarray(self.store[idx], dtype=np.float32), self.arrays.labels[idx].astype(np.int64)

    def check_reads(self) -> None:
        if not self.strict or self.epoch is None:
            return  # reads before the first refresh only build the model
        if self.reads < 0 or self.reads > self.batches_per_epoch:
            raise TrainingError(
                f"internal: epoch {self.epoch + 1} read training batches ahead of the feature refresh "
                "(stale features); use --aug-views K or report this with your Keras version"
            )

    def dataset(self):
        return _feature_batches(
            self.gather,
            len(self.arrays),
            self.feature_shape,
            self.num_classes,
            self.batch_size,
            self.seed,
        )

    def callback(self):
        import keras

        source = self

        class RefreshFeatures(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                source.refresh(epoch)

            def on_train_end(self, logs=None):
                source.check_reads()

        return RefreshFeatures()


def _plain_feature_dataset(features: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int):
    tf = _tf()
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(features, dtype=np.float32), np.eye(num_classes)[labels]))
    return ds.batch(batch_size).with_options(_feature_options(tf))


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return {i: float(len(labels) / (num_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def compile_model(model, lr: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="categorical_crossentropy",
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ],
    )


# --------------------------------------------------------------------------- callbacks


def _monitor_mode(monitor: str) -> str:
    return "min" if "loss" in monitor else "max"


def _improved(value: float, best: float | None, mode: str) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def make_run_callback(full_model, run_dir: Path, state: TrainState, history: list[dict], monitor: str, chief: bool):
    """History rows and the best full model, both written atomically after every epoch."""
    import keras

    mode = _monitor_mode(monitor)

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
            if chief:
                if _improved(value, state.best_value, mode):
                    save_model_atomic(full_model, run_dir / "best.keras")
                    state.best_value, state.best_epoch = float(value), epoch + 1
                write_history_csv(history, run_dir / "history.csv")
                state.save(run_dir / "train_state.json")

    return RunCallback()


def save_model_atomic(model, dest: Path) -> None:
    with atomic_path(dest, suffix=".keras") as tmp:
        model.save(tmp)


def write_history_csv(history: list[dict], path: Path) -> None:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buf.getvalue())


def read_history_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    parsed = []
    for row in rows:
        parsed.append(
            {k: (int(v) if k == "epoch" else v if k == "phase" else float(v)) for k, v in row.items() if v != ""}
        )
    return parsed


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.fileio import write_with

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy", "auc")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = [row.get(prefix + metric, np.nan) for row in history]
            ax.plot(epochs, values, style, markersize=3, label=("validation" if prefix else "train"))
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fine_tune_start = next((row["epoch"] for row in history if row.get("phase") == "finetune"), None)
    if fine_tune_start is not None:
        for ax in axes:
            ax.axvline(fine_tune_start - 0.5, color="grey", linestyle="--", linewidth=1)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# --------------------------------------------------------------------------- training


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"toolkit": __version__}
    for name in ("tensorflow", "keras", "numpy", "pillow", "onnx", "tf2onnx", "onnxruntime", "ai-edge-litert"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return versions


def _prepare_run_dir(config: TrainConfig, resume: bool) -> tuple[Path, TrainConfig]:
    run_dir = Path(config.out)
    saved = run_dir / "config.json"
    if resume:
        if not saved.is_file():
            raise TrainingError(f"nothing to resume in {run_dir} (no config.json)")
        stored = TrainConfig(**json.loads(saved.read_text()))
        stored.epochs = max(stored.epochs, config.epochs) if config.epochs != TrainConfig.epochs else stored.epochs
        return run_dir, stored
    # A folder "holds a run" once an epoch finished; a start that failed earlier (bad data) is simply redone.
    if (run_dir / "best.keras").exists() or (run_dir / "train_state.json").exists():
        raise TrainingError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_chief():
        write_json_atomic(saved, config)
    return run_dir, config


def train(
    config: TrainConfig, resume: bool = False, log: Callable[[str], None] = print, verbose: int = 1
) -> TrainResult:
    """Train, checkpoint and evaluate one run; write its self-contained folder."""
    config.validate()
    start = time.perf_counter()
    run_dir, config = _prepare_run_dir(config, resume)
    chief = is_chief()
    warnings: list[str] = []
    cache_dir = Path(config.cache_dir) if config.cache_dir else run_dir / "cache"

    split, train_arrays, val_arrays, report = load_dataset(
        config.data_dir, config.image_size, config.val_split, config.seed, cache_dir, progress=verbose > 0
    )
    if chief:
        write_data_report(report, run_dir / "data_report.json")
    classes = split.classes
    log(
        f"data: {len(train_arrays)} train / {len(val_arrays)} validation images, {len(classes)} classes "
        f"({', '.join(classes)}); {len(report.skipped)} files skipped (see data_report.json)"
    )

    _tf()
    import keras

    from toolkit.model import build_classifier, count_params, features_part, head_part, unfreeze_for_fine_tuning

    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    with strategy.scope():
        model, weights_info = build_classifier(
            len(classes), config.image_size, config.weights, config.head, config.dropout, config.allow_random_weights
        )
    if weights_info.warning:
        warnings.append(f"WARNING: {weights_info.warning}; training with RANDOM weights")
        log(warnings[-1])
    total, trainable = count_params(model)
    log(
        f"model: VGG16 base ({weights_info.source} weights) + {config.head} head; {total:,} parameters, {trainable:,} trainable"
    )

    precision = resolve_precision(config.precision) if config.cache_features else "fp32"
    if config.cache_features:
        log(f"frozen-base precision: {precision}" + (" (auto)" if config.precision == "auto" else ""))
    state_path = run_dir / "train_state.json"
    state = TrainState.load(state_path) if resume else TrainState()
    history = read_history_csv(run_dir / "history.csv") if resume else []
    num_classes = len(classes)
    class_weight = balanced_class_weights(train_arrays.labels, num_classes) if config.class_weight == "auto" else None
    augmenter = make_augmenter(config.seed) if config.augment else None
    monitor = config.monitor
    backup_root = run_dir / ".resume" if chief else Path(tempfile_dir())
    timings: dict[str, float] = {}

    def fit(fit_model, train_ds, val_data, initial_epoch: int, epochs: int, phase: str, data_callbacks=()) -> Any:
        run_cb = make_run_callback(model, run_dir, state, history, monitor, chief)
        callbacks = [*data_callbacks, run_cb, keras.callbacks.TerminateOnNaN()]
        if config.patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience, mode=_monitor_mode(monitor))
            )
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup_root / phase)))
        try:
            if config.strategy == "multiworker":
                from toolkit.distributed import fit_multiworker

                fit_multiworker(
                    fit_model,
                    strategy,
                    train_ds,
                    val_data,
                    len(train_arrays),
                    config.batch_size,
                    epochs,
                    initial_epoch,
                    callbacks,
                    class_weight,
                )
            else:
                warnings_module.filterwarnings("ignore", message=".*shuffle=True.*tf.data.Dataset.*")
                fit_model.fit(
                    train_ds,
                    validation_data=val_data,
                    epochs=epochs,
                    initial_epoch=initial_epoch,
                    class_weight=class_weight,
                    callbacks=callbacks,
                    verbose=verbose,
                )
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted; finished epochs are saved in {run_dir}: continue with "
                f"`toolkit train {config.data_dir} --out {run_dir} --resume`"
            ) from None
        if run_cb.diverged:
            raise TrainingError(
                "training diverged (loss became NaN); lower --lr or check the data. The best model so far is kept."
            )
        if run_cb.missing_monitor:
            raise TrainingError(f"--monitor {monitor} is not a logged metric; try val_loss or val_accuracy")

    val_feats = None
    if state.phase == "frozen":
        t0 = time.perf_counter()
        if config.cache_features:
            # Every worker computes its own features (its own augmentations): workers sharing
            # one --out must not write one another's feature files.
            features_dir = cache_dir / "features" / worker_tag() if config.strategy == "multiworker" else cache_dir
            with strategy.scope():
                head = head_part(model)
                compile_model(head, config.lr)
            extractor = build_feature_extractor(model, precision)
            feature_shape = tuple(features_part(model).output.shape[1:])
            # Validation runs the float32 base whatever --precision says: epochs are then
            # judged (and the best one picked) on exactly what the saved model computes.
            val_feats = extract_features(
                features_part(model),
                val_arrays.images,
                features_dir / "features-val.npy",
                feature_shape,
                config.batch_size,
                dtype=np.float32,
            )
            val_data = _plain_feature_dataset(val_feats, val_arrays.labels, num_classes, config.batch_size)
            train_ds, data_callbacks = _train_feature_source(
                config, extractor, train_arrays, num_classes, augmenter, features_dir, feature_shape, log
            )
            timings["feature_extraction_s"] = time.perf_counter() - t0
            fit(head, train_ds, val_data, state.completed_epochs, config.epochs, "frozen", data_callbacks)
        else:
            with strategy.scope():
                compile_model(model, config.lr)
            train_ds = image_dataset(train_arrays, num_classes, config.batch_size, True, config.seed, augmenter)
            val_ds = image_dataset(val_arrays, num_classes, config.batch_size, False, config.seed)
            fit(model, train_ds, val_ds, state.completed_epochs, config.epochs, "frozen")
        timings["frozen_phase_s"] = time.perf_counter() - t0
        state.phase = "finetune" if config.fine_tune_epochs else "done"
        if chief:
            state.save(state_path)

    if state.phase == "finetune":
        t0 = time.perf_counter()
        from toolkit.model import load_keras_model

        if (run_dir / "best.keras").is_file() and state.completed_epochs <= config.epochs:
            model.set_weights(load_keras_model(run_dir / "best.keras").get_weights())
        with strategy.scope():
            unfrozen = unfreeze_for_fine_tuning(model)
            compile_model(model, config.fine_tune_lr or config.lr / 10)
        log(
            f"fine-tuning: {unfrozen} layers of block5 unfrozen, learning rate {config.fine_tune_lr or config.lr / 10:g}"
        )
        train_ds = image_dataset(train_arrays, num_classes, config.batch_size, True, config.seed, augmenter)
        val_ds = image_dataset(val_arrays, num_classes, config.batch_size, False, config.seed)
        fit(
            model,
            train_ds,
            val_ds,
            max(state.completed_epochs, config.epochs),
            config.epochs + config.fine_tune_epochs,
            "finetune",
        )
        state.phase = "done"
        if chief:
            state.save(state_path)
        timings["fine_tune_phase_s"] = time.perf_counter() - t0

    if not chief:
        # Non-chief workers trained in lockstep; the chief evaluates and writes the run folder.
        return TrainResult(
            str(run_dir),
            state.best_epoch,
            state.best_value,
            monitor,
            float("nan"),
            None,
            weights_info.source,
            precision,
            config.mode,
            time.perf_counter() - start,
            warnings,
        )
    reusable = val_feats if config.cache_features and not config.fine_tune_epochs else None
    result = _finish_run(config, run_dir, classes, val_arrays, state, history, weights_info, precision, chief, reusable)
    result.seconds = time.perf_counter() - start
    result.warnings = warnings
    if chief:
        _write_run_json(
            config,
            run_dir,
            report,
            state,
            weights_info,
            precision,
            result,
            timings,
            total,
            trainable,
            strategy.num_replicas_in_sync,
        )
    return result


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="toolkit-worker-")


def _train_feature_source(config, extractor, train_arrays, num_classes, augmenter, cache_dir, feature_shape, log):
    """Where the head's training features come from, per the configuration: (dataset, callbacks).

    No augmentation: one pass, once. `--aug-views K`: K augmented passes up front,
    each epoch draws one view per image. Augmentation with K=0: one fresh augmented
    pass before every epoch (`EpochFeatures`).
    """
    n, labels, batch = len(train_arrays), train_arrays.labels, config.batch_size
    if not config.augment:
        feats = extract_features(extractor, train_arrays.images, cache_dir / "features-train.npy", feature_shape, batch)
        return feature_views_dataset(feats[None], labels, num_classes, batch, config.seed), []
    forward = compile_forward(extractor, augmenter)
    if config.aug_views:
        path = cache_dir / "features-train-views.npy"
        views = open_feature_store(path, (config.aug_views, n, *feature_shape), np.float16)
        for view in range(config.aug_views):
            extract_into(forward, train_arrays.images, views[view], batch)
        views.flush()
        log(f"precomputed {config.aug_views} augmented views of {n} training images")
        stored = np.load(path, mmap_mode="r", allow_pickle=False)
        return feature_views_dataset(stored, labels, num_classes, batch, config.seed), []
    fresh = EpochFeatures(
        forward,
        train_arrays,
        num_classes,
        batch,
        config.seed,
        cache_dir / "features-train-epoch.npy",
        feature_shape,
        # The multi-worker loop opens each epoch's iterator after the callbacks itself, and its
        # repeated, sharded dataset reads a varying number of batches per epoch.
        strict=config.strategy != "multiworker",
    )
    return fresh.dataset(), [fresh.callback()]


def _finish_run(
    config, run_dir, classes, val, state, history, weights_info, precision, chief, val_features=None
) -> TrainResult:
    """Metrics of the saved model itself on the validation set, plots, and the result.

    With a frozen float32 base, the saved model's output is its head applied to
    the cached float32 validation features, so no second pass over the images is needed.
    """
    from toolkit.model import head_part, load_keras_model

    best_path = run_dir / "best.keras"
    if not best_path.is_file():
        raise TrainingError("no epoch produced a usable model (the monitored value was never finite)")
    best = load_keras_model(best_path)
    if val_features is not None:
        probs = predict_in_batches(head_part(best), val_features, config.batch_size)
    else:
        probs = predict_in_batches(best, val.images, config.batch_size)
    metrics = classification_metrics(probs, val.labels, classes)
    if chief:
        write_json_atomic(run_dir / "labels.json", classes)
        write_json_atomic(run_dir / "metrics.json", metrics)
        plot_confusion(metrics, run_dir / "confusion.png", title="Validation (best model)")
        write_history_csv(history, run_dir / "history.csv")
        plot_curves(history, run_dir / "curves.png")
    return TrainResult(
        run_dir=str(run_dir),
        best_epoch=state.best_epoch,
        best_value=state.best_value,
        monitor=config.monitor,
        val_accuracy=metrics.accuracy,
        val_auc=metrics.auc,
        weights_source=weights_info.source,
        precision=precision,
        mode=config.mode,
        seconds=0.0,
        warnings=[],
    )


def predict_in_batches(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Keras inference through one traced function (model.predict has a heavy per-call tail)."""
    tf = _tf()

    @tf.function(reduce_retracing=True)
    def forward(x):
        return model(x, training=False)

    out = [
        forward(tf.constant(np.asarray(images[i : i + batch_size], dtype=np.float32))).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)


def _write_run_json(
    config, run_dir, report, state, weights_info, precision, result, timings, total, trainable, replicas
) -> None:
    best_row = {}
    for row in read_history_csv(run_dir / "history.csv"):
        if row["epoch"] == state.best_epoch:
            best_row = row
    payload = {
        "toolkit_version": __version__,
        "config": dataclasses.asdict(config),
        "mode": config.mode,
        "precision": precision,
        "weights": dataclasses.asdict(weights_info),
        "dataset": {
            "root": report.root,
            "layout": report.layout,
            "classes": report.classes,
            "counts": report.counts,
            "skipped": len(report.skipped),
        },
        "parameters": {"total": total, "trainable": trainable},
        "strategy": {"name": config.strategy, "replicas": replicas},
        "best_epoch": state.best_epoch,
        "best_monitor_value": state.best_value,
        "best_epoch_metrics": best_row,
        "validation": {"accuracy": result.val_accuracy, "auc": result.val_auc},
        "timings_s": {**timings, "total": result.seconds},
        "versions": library_versions(),
    }
    write_json_atomic(run_dir / "run.json", payload)
