"""One backend, timed in its own fresh process: `python -m toolkit.bench.worker SPEC_JSON`.

A fresh process per backend keeps one runtime's thread pools, allocator and caches
from skewing another's numbers. The result is one JSON line on stdout.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from toolkit.bench.types import BenchRecord, BenchTarget
from toolkit.operating_point import decision_from_json
from toolkit.runtime.base import model_bytes


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _keras_runner(path: str, threads: int, precision: str = "float32"):
    """The Keras model (its base in bf16 for the bf16 row) through the toolkit's one Keras inference path."""
    from toolkit.tf_setup import import_tensorflow

    tf = import_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from toolkit.keras_io import inference_function, load_keras_model
    from toolkit.model import with_precision

    model = with_precision(load_keras_model(path), "bf16" if precision == "bf16" else "fp32")
    return inference_function(model), "cpu"


def _scores(probs: np.ndarray, labels: np.ndarray, names: list[str] | None, decision):
    """Accuracy and balanced accuracy at the operating point: the figures `toolkit evaluate` gives."""
    from toolkit.metrics import classification_metrics

    if not len(labels):
        return None
    names = names or [str(i) for i in range(probs.shape[1])]
    return classification_metrics(probs, labels, names, decision)


def _load(target: BenchTarget, spec: dict, threads: int):
    """(run, provider, decision, label names, kernels) for the target: Keras, or a file through the runtime."""
    names = spec.get("labels") or []
    if target.backend == "keras":
        run, provider = _keras_runner(target.path, threads, target.precision)
        return run, provider, decision_from_json(names, spec.get("decision")), names, None  # the run's decision
    from toolkit.runtime import load

    device = target.device if target.device == "cpu" else "auto"
    clf = load(target.path, device=device, threads=threads, verify=spec.get("verify", True))
    return clf.backend.run, clf.provider, clf.decision, clf.labels, clf.backend.kernels()  # the file's own point


def run_worker(spec: dict) -> list[dict]:
    target = BenchTarget(**spec["target"])
    threads = spec["threads"]
    data = np.load(spec["images"], allow_pickle=False)
    images, labels = data["images"], data["labels"]
    t0 = time.perf_counter()
    run, provider, decision, names, kernels = _load(target, spec, threads)
    load_s = time.perf_counter() - t0
    probs = np.concatenate([run(images[i : i + 16]) for i in range(0, len(images), 16)])
    scores = _scores(probs, labels, names, decision)
    records = []
    for batch in spec["batches"]:
        batches = [images[(i * batch + np.arange(batch)) % len(images)] for i in range(8)]
        for i in range(spec["warmup"]):
            run(batches[i % len(batches)])
        times: list[float] = []
        deadline = time.perf_counter() + spec["seconds"] if spec["seconds"] else None
        i = 0
        while (deadline is None and i < spec["runs"]) or (deadline is not None and time.perf_counter() < deadline):
            x = batches[i % len(batches)]
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
            i += 1
        p50 = _percentile(times, 50) * 1000
        records.append(
            dataclasses.asdict(
                BenchRecord(
                    name=target.name,
                    backend=target.backend,
                    precision=target.precision,
                    requested_device=target.device,
                    provider=provider,
                    batch=batch,
                    runs=len(times),
                    p50_ms=p50,
                    p90_ms=_percentile(times, 90) * 1000,
                    p99_ms=_percentile(times, 99) * 1000,
                    per_image_ms=p50 / batch,
                    throughput_ips=batch * len(times) / sum(times),
                    load_s=load_s,
                    peak_rss_mb=_peak_rss_mb(),
                    size_mb=model_bytes(Path(target.path)) / 1e6,
                    accuracy=scores.accuracy if scores else None,
                    balanced_accuracy=scores.balanced_accuracy if scores else None,
                    gate_passed=target.gate_passed,
                    kernels=kernels,
                )
            )
        )
    return records


if __name__ == "__main__":
    from toolkit.errors import ToolkitError

    try:
        result = run_worker(json.loads(sys.argv[1]))
    except ToolkitError as exc:  # a refused model (tampered, corrupt): one line for the parent to report
        sys.stderr.write(f"{exc}\n")
        sys.exit(exc.exit_code)
    sys.stdout.write(json.dumps(result) + "\n")
