"""Import TensorFlow once, quietly.

TF_CPP_MIN_LOG_LEVEL hides most C++ logging, but oneDNN and CUDA-stub lines
are printed through absl before its log level applies. Users asked for a
classifier, not for that noise, so stderr is pointed at /dev/null for the
duration of the import and first device query only; Python-level errors are
unaffected because the exception propagates after stderr is restored.
"""

from __future__ import annotations

import os
import sys

from toolkit.quiet import silenced


def import_tensorflow():
    """Return the tensorflow module, imported with its start-up chatter silenced."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with silenced((2,)):
        import tensorflow as tf

        tf.config.list_physical_devices()
        import keras  # noqa: F401
    tf.get_logger().setLevel("ERROR")
    return tf
