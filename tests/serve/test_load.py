"""A bounded load test on loopback: 16 concurrent clients x 50 requests each, zero errors, right answers.

Throughput and latency are measured by benchmarks/serve.py (figures in benchmarks/SERVE.md), not asserted
here; what is asserted is that every answer is the local runtime's and that dynamic batching does batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import validation_files
from tests.serve.conftest import running_server, single_image_requests
from toolkit.runtime import load

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
