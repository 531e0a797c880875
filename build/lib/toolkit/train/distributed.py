"""Multi-worker training loop.

Keras 3's `Model.fit` does not run under `tf.distribute.MultiWorkerMirroredStrategy`
(keras-team/keras#20585: even TensorFlow's own multi-worker tutorial fails), so
multi-worker runs use this loop instead. It keeps what `fit` gives the rest of the
toolkit: the same Keras callbacks (history and best checkpoint, early stopping,
NaN termination, backup-and-restore for `--resume`) and the same log keys.

Gradients are all-reduced by the Keras optimizer inside `strategy.run`. Every
worker runs the same number of steps per epoch (uneven counts would hang the
collectives) and computes validation metrics on the whole validation set itself,
so every worker makes the same early-stopping decision.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from toolkit.metrics import keras_style_logs


@dataclasses.dataclass
class LoopPlan:
    """How much to train: examples per epoch, batch size, the epoch range, optional class weights."""

    num_examples: int
    batch_size: int
    epochs: int
    initial_epoch: int
    class_weight: dict[int, float] | None = None


def _validation_logs(model, val_ds) -> dict[str, float]:
    """The same keys and meanings as Keras's compiled metrics (see `metrics.keras_style_logs`)."""
    probs, labels = [], []
    for x, y in val_ds:
        probs.append(model(x, training=False).numpy())
        labels.append(y.numpy())
    return keras_style_logs(np.concatenate(probs), np.concatenate(labels), prefix="val_")


def fit_multiworker(model, strategy, train_ds, val_ds, callbacks: list, plan: LoopPlan) -> None:
    """Train `model` (compiled under `strategy.scope()`) for epochs [plan.initial_epoch, plan.epochs)."""
    import keras
    import tensorflow as tf

    optimizer = model.optimizer
    weights = None
    if plan.class_weight:
        weights = tf.constant([plan.class_weight[i] for i in range(len(plan.class_weight))], tf.float32)
    workers = strategy.extended._num_workers if hasattr(strategy.extended, "_num_workers") else 1
    steps = max(1, math.ceil(math.ceil(plan.num_examples / plan.batch_size) / workers))
    distributed_ds = strategy.experimental_distribute_dataset(train_ds.repeat())

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            per_example = keras.losses.categorical_crossentropy(y, pred)
            if weights is not None:
                per_example = per_example * tf.gather(weights, tf.argmax(y, axis=1))
            loss = tf.nn.compute_average_loss(per_example)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(pred, 1), tf.argmax(y, 1)), tf.float32))
        count = tf.cast(tf.shape(y)[0], tf.float32)
        return tf.reduce_sum(per_example), correct, count

    @tf.function
    def train_step(iterator):
        x, y = next(iterator)
        per_replica = strategy.run(replica_step, args=(x, y))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in per_replica]

    callback_list = keras.callbacks.CallbackList(callbacks, model=model)
    model.stop_training = False
    model._initial_epoch = None
    callback_list.on_train_begin()
    start = model._initial_epoch if model._initial_epoch is not None else plan.initial_epoch  # set by BackupAndRestore
    for epoch in range(start, plan.epochs):
        callback_list.on_epoch_begin(epoch)
        # A fresh iterator per epoch, opened after the callbacks ran (as Keras does), so
        # callbacks that refresh the training data are seen and nothing stale is prefetched.
        distributed = iter(distributed_ds)
        totals = np.zeros(3)
        for step in range(steps):
            callback_list.on_train_batch_begin(step)
            values = [float(v) for v in train_step(distributed)]
            totals += values
            callback_list.on_train_batch_end(step, {"loss": values[0] / max(values[2], 1.0)})
            if model.stop_training:
                break
        logs = {"loss": totals[0] / max(totals[2], 1.0), "accuracy": totals[1] / max(totals[2], 1.0)}
        logs.update(_validation_logs(model, val_ds))
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end()
