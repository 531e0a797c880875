"""A trial's fine-tuning on cached cut features: the unfrozen blocks' cost, never the frozen ones'.

As `toolkit train` fine-tunes (train/cut.py), the frozen blocks below each of the base's cuts run
once: their output for every non-test image is stored in RUN/tune/features-<base>-<cut>.npy before
the search. A trial that fine-tunes trains its head on the top features first (search.py), then
the base above its cut together with that head on the cut's features, at its own rate and
schedule, and is scored on the held-out fold from there. The pretrained weights above the cut are
restored before every fold, so no fold or trial starts from another's training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass
class Pretrained:
    """One base's classifier as built with the search's weights, and the pretrained weights above each cut."""

    model: object
    above: dict[str, tuple[object, list]]  # cut -> (the base above it, its pretrained weights)

    def reset(self, cut: str):
        """The base above `cut` with its pretrained weights back (trainable, BatchNormalization in inference)."""
        above, weights = self.above[cut]
        above.set_weights(weights)
        for layer in above.layers:  # the classifier froze them as layers of its base: unfrozen one by one
            layer.trainable = True
        return above


def pretrained(model) -> Pretrained:
    from toolkit.model import above_cut, base_model, base_spec

    spec, base = base_spec(model), base_model(model)
    above = {cut: above_cut(base, layer) for cut, layer in spec.cuts.items()}
    return Pretrained(model, {cut: (part, part.get_weights()) for cut, part in above.items()})


@dataclasses.dataclass
class FineTuneStep:
    """What one fold's fine-tuning needs beyond its trained head."""

    base: Pretrained
    features: np.ndarray  # the cut's features of every non-test image (rows as the top features')
    labels: np.ndarray
    num_classes: int
    batch_size: int


def fine_tune_fold(values: dict, step: FineTuneStep, head, rows: tuple[np.ndarray, np.ndarray],
                   class_weight: dict | None) -> np.ndarray:  # fmt: skip
    """Train the base above the trial's cut with `head` on the training rows; the held-out rows' probabilities."""
    import keras

    from toolkit.model import freeze_head_statistics
    from toolkit.train.config import TrainConfig
    from toolkit.train.fit import compile_model, cosine_schedule

    train, held = rows
    cut, epochs, lr = values["fine_tune_from"], int(values["fine_tune_epochs"]), float(values["fine_tune_lr"])
    above = step.base.reset(cut)
    freeze_head_statistics(head)  # as `toolkit train` fine-tunes (model.unfreeze_for_fine_tuning)
    inputs = keras.Input(tuple(step.features.shape[1:]), name="cut_features")
    upper = keras.Model(inputs, head(above(inputs, training=False)), name=f"from_{cut}")
    config = TrainConfig.from_flat(**{k: values[k] for k in ("weight_decay", "label_smoothing")})
    compile_model(upper, lr, config)
    callbacks: list[Callable] = [cosine_schedule(lr, 0, epochs)] if values["fine_tune_schedule"] == "cosine" else []
    x_train = np.asarray(step.features[train], np.float32)
    onehot = keras.utils.to_categorical(step.labels[train], step.num_classes)
    upper.fit(x_train, onehot, batch_size=step.batch_size, epochs=epochs, class_weight=class_weight,
              callbacks=callbacks, verbose=0, shuffle=True)  # fmt: skip
    return upper.predict(np.asarray(step.features[held], np.float32), batch_size=64, verbose=0)
