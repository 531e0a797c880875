"""What the machine offers: native bf16, the compute precision to use, distribution strategies.

Kept apart from training so that bench and export can ask "does this CPU run bf16
natively?" without loading the training loop.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path

from toolkit.errors import DatasetError
from toolkit.tf_setup import import_tensorflow


class BasePrecision(StrEnum):
    """Compute precision of the frozen base's cached forward passes (auto: bf16 where the silicon has it)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Strategy(StrEnum):
    """tf.distribute strategy (multiworker reads TF_CONFIG)."""

    default = "default"
    mirrored = "mirrored"
    multiworker = "multiworker"


MATRIX_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def cpu_instruction_sets() -> list[str]:
    """The matrix instruction sets /proc/cpuinfo lists (what decides which precision runs fast here)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in MATRIX_FLAGS if f in flags]


def cpu_supports_bf16() -> bool:
    """True on CPUs with AVX512_BF16 or AMX: bf16 runs natively there (emulated bf16 is only slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str) -> str:
    """`auto` -> bf16 where the hardware runs it natively (AVX512_BF16/AMX CPUs, bf16 GPUs), else fp32."""
    if requested != "auto":
        return requested
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        major = (details.get("compute_capability") or (0, 0))[0]
        return "bf16" if major >= 8 else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


def tf_config() -> dict:
    """The parsed TF_CONFIG environment variable ({} when unset)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise DatasetError(f"TF_CONFIG is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise DatasetError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return config


def is_chief(config: dict | None = None) -> bool:
    """True unless TF_CONFIG names this process a non-chief multi-worker task."""
    config = tf_config() if config is None else config
    if not config:
        return True
    task, cluster = config.get("task", {}), config.get("cluster", {})
    if task.get("type") == "chief":
        return True
    if "chief" in cluster:
        return False
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def worker_tag(config: dict | None = None) -> str:
    """ "type-index" of this TF_CONFIG task ("" outside multi-worker), to keep per-worker files apart."""
    config = tf_config() if config is None else config
    if not config:
        return ""
    task = config.get("task", {})
    return f"{task.get('type', 'worker')}-{int(task.get('index', 0))}"


def make_strategy(name: str):
    """A tf.distribute strategy: the default one, mirrored over local devices, or multi-worker."""
    tf = import_tensorflow()
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
