"""The tf.distribute mirrored path, over two logical CPU devices in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import IMAGE_SIZE

TRAIN_IN_PROCESS = """
import sys, tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
if sys.argv[3] == "mirrored":
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from toolkit.train import TrainConfig, train
config = TrainConfig(data_dir=sys.argv[1], out=sys.argv[2], image_size={size}, epochs=2, batch_size=8,
                     weights="none", augment=False, precision="fp32", strategy=sys.argv[3])
train(config, log=print, verbose=0)
"""


def _run(args):
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN_IN_PROCESS.format(size=IMAGE_SIZE), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_mirrored_strategy_on_two_logical_cpus(demo_dir, tmp_path):
    proc = _run([demo_dir, tmp_path / "run", "mirrored"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["strategy"] == {"name": "mirrored", "replicas": 2}
    assert (tmp_path / "run" / "best.keras").is_file()
