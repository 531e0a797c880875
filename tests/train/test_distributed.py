"""The tf.distribute paths: mirrored over two logical CPUs, multi-worker over two local processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import IMAGE_SIZE

pytestmark = pytest.mark.slow  # distributed training in subprocesses

TRAIN_IN_PROCESS = """
import sys, tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
if sys.argv[3] == "mirrored":
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from toolkit.train import TrainConfig, train
config = TrainConfig.from_flat(data_dir=sys.argv[1], out=sys.argv[2], base="tiny", image_size={size}, epochs=2, batch_size=8,
                     weights="none", augment=sys.argv[4:] == ["augment"], precision="fp32", strategy=sys.argv[3])
train(config, log=print, verbose=0)
"""


def _run(args, env=None):
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN_IN_PROCESS.format(size=IMAGE_SIZE), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mirrored_strategy_on_two_logical_cpus(demo_dir, tmp_path):
    proc = _run([demo_dir, tmp_path / "run", "mirrored"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["strategy"] == {"name": "mirrored", "replicas": 2}
    assert (tmp_path / "run" / "best.keras").is_file()


@pytest.mark.xdist_group("processes")  # several TF processes in lockstep: never beside the tuning cluster's
def test_multiworker_strategy_with_two_local_workers_sharing_one_run_folder(demo_dir, tmp_path):
    """Plain augmented mode: each worker refreshes its own features every epoch, in its own files."""
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    run = tmp_path / "run"
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(_run([demo_dir, run, "multiworker", "augment"], env=env))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-2000:]
    chief = json.loads((run / "run.json").read_text())
    assert chief["strategy"] == {"name": "multiworker", "replicas": 2}
    assert chief["best_epoch"] in (1, 2)
    with open(run / "history.csv") as fh:
        assert [line.split(",")[0] for line in fh.read().splitlines()[1:]] == ["1", "2"]
    assert (run / "best.keras").is_file()
    feature_files = sorted(p.relative_to(run / "cache" / "features").as_posix() for p in run.glob("cache/features/*/*"))
    assert feature_files == [f"worker-{i}/features-{kind}.npy" for i in (0, 1) for kind in ("train-epoch", "val")], (
        feature_files
    )
