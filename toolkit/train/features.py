"""The frozen base's output, computed once (or once per view, or once per epoch) and stored.

The base never changes while the head trains, so its features are computed up
front into memory-mapped stores and the head trains on those:

* no augmentation: one pass, once (`extract_features`);
* `--aug-views K`: K augmented passes up front, each epoch draws one view per image;
* augmentation with K=0: one fresh augmented pass before every epoch (`EpochFeatures`).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path

import numpy as np

from toolkit.data import ImageArrays
from toolkit.errors import TrainingError
from toolkit.progress import phase
from toolkit.tf_setup import import_tensorflow


def distribute_options(tf):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def feature_options(tf):
    """Options for the head's feature batches: no autotuning, no background work.

    A batch of stored features is gathered in milliseconds, so prefetching gains
    nothing, while tf.data's autotuning and prefetch threads wake up during the
    base's forward passes and preempt one of oneDNN's two threads (here: 4-6%
    slower passes in the plain per-epoch mode), and dropping a prefetching
    iterator at an epoch's start stalled it for up to 3 s.
    """
    options = distribute_options(tf)
    options.autotune.enabled = False
    return options


def compile_forward(extractor, augmenter=None):
    """The frozen extractor as one traced function of a uint8 batch, augmentation fused in.

    Extraction calls it from the main thread on plain numpy batches, with no tf.data
    pipeline: the convolutions already keep every core busy, and a prefetching
    pipeline preempting one of oneDNN's threads made each pass up to 18% slower here.
    One signature with any batch size: a last, smaller batch does not retrace it.
    """
    tf = import_tensorflow()

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


def extract_into(forward, images: np.ndarray, store: np.ndarray, batch_size: int, description: str = "") -> int:
    """Fill `store` (often a memmap) with the features of `images` (often a memmap), in order."""
    if len(store) != len(images):
        raise TrainingError(f"feature store holds {len(store)} rows for {len(images)} images")
    with phase(description or "extracting features", len(images)) as advance:
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start : start + batch_size], dtype=np.uint8)
            store[start : start + len(batch)] = forward(batch).numpy().astype(store.dtype, copy=False)
            advance(len(batch))
    return len(images)


def extract_features(
    extractor, images: np.ndarray, out_path: Path, batch_size: int, dtype=np.float16, description: str = ""
) -> np.ndarray:
    """Run the frozen extractor over `images` once; store its features in a memmap.

    float16 storage is plenty for training features (7x7x512 per image at 224 px)
    and halves their footprint; validation features are kept in float32.
    """
    feature_shape = tuple(extractor.output.shape[1:])
    store = open_feature_store(out_path, (len(images), *feature_shape), dtype)
    extract_into(compile_forward(extractor), images, store, batch_size, description)
    store.flush()
    return np.load(out_path, mmap_mode="r", allow_pickle=False)


def float_forward(model):
    """`model` in inference as one traced function of a float32 batch of any size."""
    tf = import_tensorflow()
    signature = [tf.TensorSpec((None, *model.input.shape[1:]), tf.float32)]
    return tf.function(lambda x: model(x, training=False), input_signature=signature)


def map_features(model, inputs: np.ndarray, store: np.ndarray, batch_size: int, description: str) -> None:
    """Fill `store` with `model` applied to stored features `inputs` (e.g. block5 on cached block4 outputs)."""
    forward = float_forward(model)
    with phase(description, len(inputs)) as advance:
        for start in range(0, len(inputs), batch_size):
            batch = np.asarray(inputs[start : start + batch_size], dtype=np.float32)
            store[start : start + len(batch)] = forward(batch).numpy().astype(store.dtype, copy=False)
            advance(len(batch))


def feature_statistics(model, arrays, batch_size: int, description: str = "feature statistics"):
    """Per-feature mean and variance of `model`'s output over every row of `arrays` (a list of stores).

    Sums accumulate in float64, batch by batch, so stores larger than memory work.
    """
    forward = float_forward(model)
    total, squares, count = 0.0, 0.0, 0
    with phase(description, sum(len(a) for a in arrays)) as advance:
        for array in arrays:
            for start in range(0, len(array), batch_size):
                out = forward(np.asarray(array[start : start + batch_size], dtype=np.float32)).numpy()
                out = out.astype(np.float64).reshape(len(out), -1)
                total, squares, count = total + out.sum(0), squares + (out**2).sum(0), count + len(out)
                advance(len(out))
    if not count:
        raise TrainingError("no training features to standardise the head with")
    mean = total / count
    return mean, np.maximum(squares / count - mean**2, 0.0)


def feature_batches(gather, n: int, feature_shape, num_classes: int, batch_size: int, seed: int):
    """Shuffled batches of (float32 features, one-hot labels), each fetched by `gather(indices)`."""
    tf = import_tensorflow()

    def load(idx):
        x, y = tf.numpy_function(gather, [idx], (tf.float32, tf.int64), stateful=True)
        x.set_shape((None, *feature_shape))
        y.set_shape((None,))
        return x, tf.one_hot(y, num_classes)

    ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return ds.map(load).with_options(feature_options(tf))


def feature_views_dataset(views: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int, seed: int):
    """Each epoch draws one of the K stored augmented views of every image."""
    k, n = views.shape[:2]
    rng = np.random.default_rng(seed)

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chosen = rng.integers(0, k, size=len(idx))
        return np.asarray(views[chosen, idx], dtype=np.float32), labels[idx].astype(np.int64)

    return feature_batches(gather, n, views.shape[2:], num_classes, batch_size, seed)


def plain_feature_dataset(features: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int):
    """Validation batches of stored features, in order."""
    tf = import_tensorflow()
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(features, dtype=np.float32), np.eye(num_classes)[labels]))
    return ds.batch(batch_size).with_options(feature_options(tf))


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
    `next()`, which comes after `on_epoch_begin`; the dataset has no prefetch.
    Reads are counted all the same: with `strict`, a batch read while the buffer
    is being rewritten, or more batches in an epoch than it has, means a batch was
    fetched ahead for the next epoch and would train on stale features; that
    raises rather than passing silently, should Keras or tf.data ever read earlier.
    """

    def __init__(self, forward, source: FeatureSource, path: Path, strict: bool = True) -> None:
        self.forward, self.source, self.strict = forward, source, strict
        self.store = open_feature_store(path, (len(source.arrays), *source.feature_shape), np.float16)
        self.batches_per_epoch = math.ceil(len(source.arrays) / source.batch_size)
        self.epoch: int | None = None  # whose features the buffer holds
        self.reads = 0
        self.refreshing = False
        self._lock = threading.Lock()

    def prime(self, epoch: int) -> np.ndarray:
        """Compute `epoch`'s buffer now (its epoch then reuses it); returns the buffer, e.g. to measure it."""
        self.refresh(epoch)
        return self.store

    def refresh(self, epoch: int) -> None:
        """Recompute the buffer for `epoch` before any of its batches is read."""
        self.check_reads()
        with self._lock:
            self.refreshing = True
        extract_into(
            self.forward, self.source.arrays.images, self.store, self.source.batch_size, f"epoch {epoch + 1} features"
        )
        with self._lock:
            self.refreshing, self.epoch, self.reads = False, epoch, 0

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(idx)
        with self._lock:
            if self.refreshing:
                self.reads = -1  # poisoned: a batch was read while the buffer was half rewritten
            elif self.epoch is not None and self.reads >= 0:
                self.reads += 1
            return np.asarray(self.store[idx], dtype=np.float32), self.source.arrays.labels[idx].astype(np.int64)

    def check_reads(self) -> None:
        if not self.strict or self.epoch is None:
            return  # reads before the first refresh only build the model
        if self.reads < 0 or self.reads > self.batches_per_epoch:
            raise TrainingError(
                f"internal: epoch {self.epoch + 1} read training batches ahead of the feature refresh "
                "(stale features); use --aug-views K or report this with your Keras version"
            )

    def dataset(self):
        s = self.source
        return feature_batches(self.gather, len(s.arrays), s.feature_shape, s.num_classes, s.batch_size, s.seed)

    def callback(self):
        import keras

        owner = self

        class RefreshFeatures(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if owner.epoch != epoch or owner.reads != 0:  # not already primed for this epoch
                    owner.refresh(epoch)

            def on_train_end(self, logs=None):
                owner.check_reads()

        return RefreshFeatures()


@dataclasses.dataclass
class FeatureSource:
    """The training images and how the head consumes their features."""

    arrays: ImageArrays
    num_classes: int
    batch_size: int
    seed: int
    feature_shape: tuple[int, ...]
    folder: Path  # where the feature stores live


def training_features(extractor, source: FeatureSource, augmenter, aug_views: int, strict: bool = True):
    """Where the head's training features come from: (dataset, callbacks, rows).

    `rows(epoch)` returns the stores that epoch trains on (every view), for the head's
    feature statistics; in the per-epoch mode it computes that epoch's pass early.

    No augmenter: one pass, once. `aug_views` K > 0: K augmented passes up front,
    each epoch draws one view per image. Augmentation with K=0: one fresh augmented
    pass before every epoch (`EpochFeatures`); `strict=False` for the multi-worker
    loop, whose repeated, sharded dataset reads a varying number of batches per epoch.
    """
    s = source
    n, labels = len(s.arrays), s.arrays.labels
    if augmenter is None:
        path = s.folder / "features-train.npy"
        feats = extract_features(extractor, s.arrays.images, path, s.batch_size, description="training features")
        dataset = feature_views_dataset(feats[None], labels, s.num_classes, s.batch_size, s.seed)
        return dataset, [], lambda epoch: [feats]
    forward = compile_forward(extractor, augmenter)
    if aug_views:
        path = s.folder / "features-train-views.npy"
        views = open_feature_store(path, (aug_views, n, *s.feature_shape), np.float16)
        for view in range(aug_views):
            extract_into(forward, s.arrays.images, views[view], s.batch_size, f"augmented view {view + 1}/{aug_views}")
        views.flush()
        stored = np.load(path, mmap_mode="r", allow_pickle=False)
        dataset = feature_views_dataset(stored, labels, s.num_classes, s.batch_size, s.seed)
        return dataset, [], lambda epoch: list(stored)
    fresh = EpochFeatures(forward, source, s.folder / "features-train-epoch.npy", strict=strict)
    return fresh.dataset(), [fresh.callback()], lambda epoch: [fresh.prime(epoch)]


def standardise_head(head, stores: list, batch_size: int, log) -> None:
    """Set the head's `feature_norm` from the features its first epoch trains on (`stores`: every view).

    Computed at every start of the frozen phase; a resumed epoch's BackupAndRestore
    then puts back the statistics the run started with.
    """
    from toolkit.model import pre_norm, set_feature_statistics

    mean, variance = feature_statistics(pre_norm(head), stores, batch_size)
    set_feature_statistics(head, mean, variance)
    log(f"head inputs standardised with the mean and variance of {len(mean):,} training features")
