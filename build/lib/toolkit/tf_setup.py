"""Import TensorFlow once, quietly: the one place that sets TensorFlow's logging.

TF_CPP_MIN_LOG_LEVEL hides most C++ logging, but oneDNN and CUDA-stub lines
are printed through absl before its log level applies. The command line asked
for a classifier, not for that noise, so with `quiet=True` (training, export,
the CLI) stderr is pointed at /dev/null for the duration of the import and first
device query only. Library code embedded in someone else's process (the runtime's
Keras backend) passes `quiet=False` and never touches the host's file descriptors.
"""

from __future__ import annotations

import os
import sys

from toolkit.errors import MissingDependencyError


def quiet_tensorflow_env() -> None:
    """Ask TensorFlow's C++ side for errors only; must run before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def import_tensorflow(quiet: bool = True):
    """Return the tensorflow module (and make sure Keras is loaded beside it)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    quiet_tensorflow_env()
    if quiet:
        from toolkit.quiet import silenced

        with silenced((2,)):
            tf = _import()
    else:
        tf = _import()
    tf.get_logger().setLevel("ERROR")
    return tf


def _import():
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingDependencyError(
            "this needs TensorFlow, which the base install leaves out: pip install 'toolkit[train]'"
        ) from None

    tf.config.list_physical_devices()
    import keras  # noqa: F401

    return tf
