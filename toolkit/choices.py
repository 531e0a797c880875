"""The fixed vocabularies of the command line, as enums Typer lists in --help and checks before any work.

One name means one thing everywhere: `--format` is a model format, `--precision` an
artifact's numeric precision, `--device` where inference runs, `--batch-size`
images per call.
"""

from __future__ import annotations

from enum import StrEnum


class BasePrecision(StrEnum):
    """Compute precision of the frozen base's cached forward passes during training."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Head(StrEnum):
    flatten = "flatten"
    gap = "gap"
    gmp = "gmp"
    gap_gmp = "gap+gmp"


class FineTuneFrom(StrEnum):
    """The first unfrozen block of fine-tuning."""

    block5 = "block5"
    block4 = "block4"


class Schedule(StrEnum):
    """The fine-tuning learning rate over its epochs."""

    constant = "constant"
    cosine = "cosine"


class Strategy(StrEnum):
    default = "default"
    mirrored = "mirrored"
    multiworker = "multiworker"


class Monitor(StrEnum):
    val_loss = "val_loss"
    val_accuracy = "val_accuracy"
    val_auc = "val_auc"
    val_precision = "val_precision"
    val_recall = "val_recall"
    loss = "loss"
    accuracy = "accuracy"


class ClassWeight(StrEnum):
    none = "none"
    auto = "auto"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class PixelScale(StrEnum):
    raw = "0..255"
    unit = "0..1"


class ExportFormat(StrEnum):
    all = "all"
    onnx = "onnx"
    tflite = "tflite"
    openvino = "openvino"
    web = "web"


class Calibration(StrEnum):
    """How int8 activation ranges are chosen from the calibration images."""

    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class BenchFormat(StrEnum):
    keras = "keras"
    onnx = "onnx"
    tflite = "tflite"
    openvino = "openvino"


class Precision(StrEnum):
    """An artifact's numeric precision (bf16: the OpenVINO IR, or in bench the Keras model's base in bfloat16)."""

    float32 = "float32"
    float16 = "float16"
    dynamic = "dynamic"
    int8 = "int8"
    bf16 = "bf16"
