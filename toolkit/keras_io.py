"""Generic Keras helpers below the runtime: load a `.keras` file safely, run it as one traced function.

Nothing here knows a base network or the training recipe, so `toolkit.runtime`'s
Keras backend, bench and export use them without importing model building.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from toolkit.errors import ModelError

IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)  # caffe preprocessing's mean (VGG's), in BGR order


def _keras():
    import keras

    return keras


def _legacy_preprocess_class():
    """The custom layer of run folders made before 0.2, kept so they still load (safe_mode stays on)."""
    keras = _keras()

    @keras.saving.register_keras_serializable(package="toolkit", name="CaffePreprocess")
    class CaffePreprocess(keras.layers.Layer):
        def call(self, inputs):
            x = keras.ops.cast(inputs, self.compute_dtype)
            x = keras.ops.take(x, [2, 1, 0], axis=-1)
            mean = keras.ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=self.compute_dtype)
            return x - mean

        def compute_output_shape(self, input_shape):
            return input_shape

    return CaffePreprocess


_LEGACY_CLASS: list = []


def custom_objects() -> dict:
    """Objects `keras.saving.load_model` needs for older toolkit models (new ones need none)."""
    if not _LEGACY_CLASS:
        _LEGACY_CLASS.append(_legacy_preprocess_class())
    return {"toolkit>CaffePreprocess": _LEGACY_CLASS[0], "CaffePreprocess": _LEGACY_CLASS[0]}


def inference_function(model):
    """`model` as one traced function of a float32 batch of any size: numpy in, numpy out.

    The one Keras inference path of the toolkit (export's reference outputs, bench's
    Keras rows, the runtime's Keras backend, training's final metrics):
    `model.predict` has a heavy per-call tail at batch 1, and an input signature
    with an open batch dimension means a smaller last batch does not retrace.
    """
    import numpy as np
    import tensorflow as tf

    forward = traced_forward(model)

    def run(batch):
        out = forward(tf.constant(np.asarray(batch, dtype=np.float32)))
        return tuple(o.numpy() for o in out) if isinstance(out, list | tuple) else out.numpy()  # several outputs

    return run


def traced_forward(model, input_name: str | None = None):
    """`model(x, training=False)` as one `tf.function` over a float32 batch of any size (an open batch dimension).

    What `inference_function` runs and what OpenVINO's converter reads (export/openvino.py), so both see
    the same graph; `input_name` names the input tensor of a traced graph.
    """
    import tensorflow as tf

    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=input_name)]
    return tf.function(lambda x: model(x, training=False), input_signature=signature)


def predict_in_batches(model, images, batch_size: int = 32):
    """Probabilities of `model` for `images` (often a memmap), `batch_size` at a time."""
    import numpy as np

    forward = inference_function(model)
    out = [forward(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)


def count_params(model) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    import numpy as np

    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(sum(np.prod(w.shape) for w in model.weights))
    return total, trainable


def load_keras_model(path: str | os.PathLike[str], compile: bool = False):
    """Load a `.keras` file with safe_mode=True only: Lambda layers and unknown objects are refused."""
    keras = _keras()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found" for a PNG or a truncated file
        raise ModelError(f"{path} is not a Keras model file (a .keras file is a zip archive; this one is damaged)")
    try:
        return keras.saving.load_model(path, custom_objects=custom_objects(), compile=compile, safe_mode=True)
    except Exception as exc:
        text = " ".join(str(exc).split())
        if "safe_mode" in text or "Lambda" in text or "unsafe" in text.lower():
            raise ModelError(
                f"refusing to load {path.name}: it contains code (a Lambda layer) that safe_mode blocks"
            ) from exc
        if "Could not locate" in text or "Unknown" in text:
            raise ModelError(f"refusing to load {path.name}: unknown custom object ({text[:160]})") from exc
        raise ModelError(f"cannot load Keras model {path.name}: {text[:200]}") from exc
