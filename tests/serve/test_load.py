"""A bounded load test on loopback: 16 concurrent clients x 50 requests each, zero errors, right answers.

Throughput and latency are measured by benchmarks/serve.py (figures in benchmarks/SERVE.md), not asserted
here; what is asserted is that every answer is the local runtime's and that dynamic batching does batch.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.conftest import validation_files
from tests.serve.conftest import running_server, single_image_requests
from tests.serve.hostile_mix import MB, Mix, Watch, run_mix, summary
from toolkit.runtime import load
from toolkit.serve.options import ServeOptions

CLIENTS, REQUESTS = 16, 50
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve-load")]


@pytest.mark.parametrize("max_batch_size", [8, 1])
def test_sixteen_clients_get_zero_errors_and_their_own_answers(exported_run, max_batch_size):
    model = exported_run / "export" / "model_int8.onnx"
    local = load(model)
    pixels = np.stack([local.preprocess(p) for p in validation_files(exported_run)])
    expected = np.concatenate([local.predict_arrays(pixels[k : k + 1]) for k in range(len(pixels))])
    flags = ["--max-batch-size", str(max_batch_size), "--max-wait-ms", "5"]
    with running_server(model, *flags) as server, ThreadPoolExecutor(CLIENTS) as pool:
        runs = [
            pool.submit(single_image_requests, server.address, server.name, pixels, REQUESTS, c) for c in range(CLIENTS)
        ]
        answers = [(k, probs) for run in runs for k, probs, _ in run.result()]  # any client error is raised here
        assert len(answers) == CLIENTS * REQUESTS
        worst = max(float(np.abs(probs - expected[k]).max()) for k, probs in answers)
        assert worst <= 1e-6, worst  # a batched int8 run may round once differently, never more
        assert server.metric("toolkit_request_errors_total") == 0
        runs_made = server.metric("toolkit_batch_size_count")
        images = server.metric("toolkit_batch_size_sum")
    assert images == CLIENTS * REQUESTS
    if max_batch_size == 1:
        assert runs_made == images
    else:
        assert runs_made < images / 2  # requests were merged: on average more than two per model run


def test_sixteen_clients_mixing_valid_and_hostile_bodies_get_no_5xx(exported_run):
    """The mix of tests/serve/hostile_mix.py (JSON bombs, 64-megapixel PNGs, nesting, hang-ups, ...) from 16
    clients: no 5xx, every valid answer the local runtime's, liveness answered throughout, memory bounded.
    benchmarks/serve_hostile.py measures the same mix on the demo model (SERVE_HOSTILE.md)."""
    model = exported_run / "export" / "model_int8.onnx"
    local = load(model)
    files = validation_files(exported_run)
    pixels = np.stack([local.preprocess(p) for p in files])
    expected = np.concatenate([local.predict_arrays(pixels[k : k + 1]) for k in range(len(pixels))])
    with running_server(model) as server:
        mix = Mix(server.url, server.name, pixels, _jpeg(files[0]))
        with Watch(server.url, server.process.pid) as idle:
            time.sleep(0.5)
        with Watch(server.url, server.process.pid) as watch:
            outcomes = run_mix(mix, CLIENTS, len(mix.cycle))
        stderr = "\n".join(server.stderr)
    answers = summary(outcomes)
    assert not [o for o in outcomes if o.status >= 500], answers
    assert answers["valid_infer"] == {"200": CLIENTS * 3} and answers["valid_classify"] == {"200": CLIENTS * 2}
    assert answers["huge_png"] == {"200": CLIENTS}
    for kind in ("json_bomb", "nested", "unicode_top_k", "shape_overflow", "not_an_image"):
        assert answers[kind] == {"400": CLIENTS}, (kind, answers[kind])
    worst = max(
        float(np.abs(o.probabilities - expected[o.image]).max()) for o in outcomes if o.probabilities is not None
    )
    assert worst <= 1e-6
    assert max(watch.latencies) < 1.0, max(watch.latencies)  # the figure for the docs: benchmarks/SERVE_HOSTILE.md
    bound = max(idle.rss) + ServeOptions().max_decode_bytes + CLIENTS * 2 * 16 * MB  # idle + budget + bodies
    assert max(watch.rss) < bound, (max(watch.rss) / MB, bound / MB)
    assert "Traceback" not in stderr


def _jpeg(path) -> bytes:
    out = io.BytesIO()
    Image.open(path).convert("RGB").save(out, format="JPEG")
    return out.getvalue()
