"""`toolkit predict --engine ray` on a local 2-CPU cluster: the rows local predict gives, a killed worker
retried by Ray with no file lost or written twice, and the command line end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from toolkit.batch import BatchOptions, Engine
from toolkit.batch.ray_engine import RayPredictor
from toolkit.batch.run import predict_to_table
from toolkit.runtime import load

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time, on one worker

IMAGES = 300


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """A few hundred small images (noise at several sizes and modes), and two files that are no image."""
    folder = tmp_path_factory.mktemp("ray-images")
    rng = np.random.default_rng(5)
    for i in range(IMAGES):
        size = (24 + i % 17, 40 - i % 11)
        pixels = rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert("L" if i % 7 == 0 else "RGB")
        image.save(folder / f"img_{i:04d}.{'png' if i % 2 else 'jpg'}")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def _paths(folder: Path) -> list[str]:
    from toolkit.imaging import collect_images

    return [str(p) for p in collect_images([folder])[0]]


def _table(model: Path, folder: Path, out: Path, engine: Engine, predictor=None) -> list[dict]:
    classifier = load(model)
    options = BatchOptions(engine=engine, workers=2)
    load_options = {"threads": 1} if engine == Engine.ray else {}
    summary = predict_to_table(classifier, _paths(folder), out, options, 16, load_options, predictor)
    assert summary.rows == IMAGES + 2 and summary.failed == 2
    return pq.read_table(out).to_pylist()


def test_the_command_line_runs_on_its_own_local_cluster(exported_run, image_folder, tmp_path):
    model = exported_run / "export" / "model_float32.onnx"
    outs = {}
    for engine in ("local", "ray"):
        outs[engine] = tmp_path / f"{engine}.csv"
        command = [sys.executable, "-m", "toolkit.cli", "predict", str(model), str(image_folder)]
        command += ["--engine", engine, "--out", str(outs[engine])] + (["--workers", "2"] if engine == "ray" else [])
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 2, result.stderr  # the two files that are no image
        assert f"wrote {IMAGES + 2} rows" in result.stderr
    assert outs["ray"].read_text() == outs["local"].read_text()


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_rows_equal_local_rows(exported_run, image_folder, tmp_path, ray_cluster):
    model = exported_run / "export" / "model_int8.onnx"
    local = _table(model, image_folder, tmp_path / "local.parquet", Engine.local)
    distributed = _table(model, image_folder, tmp_path / "ray.parquet", Engine.ray)
    assert distributed == local  # every row, bit for bit, in the same order
    assert {r["error"] for r in local if r["error"]} == {"empty file", "not an image Pillow can read"}


class DiesOnce(RayPredictor):
    """Kills its own worker process with SIGKILL in the middle of its first batch (once per test run)."""

    marker = ""

    def __call__(self, batch):
        marker = Path(self.marker)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def test_a_killed_worker_is_retried_and_no_file_is_lost_or_doubled(exported_run, image_folder, tmp_path, ray_cluster):
    model = exported_run / "export" / "model_float32.tflite"
    marker = tmp_path / "killed"
    predictor = type("DiesOnceHere", (DiesOnce,), {"marker": str(marker)})
    local = _table(model, image_folder, tmp_path / "local.parquet", Engine.local)
    distributed = _table(model, image_folder, tmp_path / "ray.parquet", Engine.ray, predictor)
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker did die
    assert distributed == local
