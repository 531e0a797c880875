"""`toolkit serve` as clients see it: tritonclient (a client this project did not write), the classify route,
errors that never stop the server, metrics, and a graceful stop that finishes in-flight work."""

from __future__ import annotations

import gzip
import io
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from tests.conftest import validation_files
from tests.serve.conftest import running_server
from toolkit.runtime import load

pytestmark = pytest.mark.slow  # live servers

ARTIFACTS = [
    "model_float32.onnx",
    "model_int8.tflite",
    "model_bf16.xml",
    "model_int8.xml",
]  # ONNX Runtime, LiteRT, OpenVINO


def _pixels(run, count: int = 6) -> np.ndarray:
    classifier = load(run / "export" / "model_float32.onnx")
    return np.stack([classifier.preprocess(p) for p in validation_files(run)[:count]])


def _triton_infer(client, name: str, pixels: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    tensor = triton.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
    result = client.infer(name, [tensor], outputs=outputs)
    return result.as_numpy("probabilities"), result.as_numpy("label")


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_tritonclient_gets_the_local_runtime_probabilities(exported_run, artifact):
    model = exported_run / "export" / artifact
    local = load(model)
    pixels = _pixels(exported_run)
    expected = local.predict_arrays(pixels)
    with running_server(model) as server:
        client = triton.InferenceServerClient(server.address)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(server.name)
        assert server.name == model.stem
        metadata = client.get_model_metadata(server.name)
        assert metadata["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
        assert metadata["facts"] == local.info.to_json()
        assert client.get_model_config(server.name)["max_batch_size"] == 8
        for binary in (True, False):
            probs, labels = _triton_infer(client, server.name, pixels, binary)
            assert probs.dtype == np.float32 and np.array_equal(probs, expected), (artifact, binary)
            assert [label.decode() if isinstance(label, bytes) else label for label in labels] == [
                local.labels[i] for i in local.decide(expected)
            ]
        gz = client.infer(
            server.name,
            [_input(pixels)],
            request_compression_algorithm="gzip",
            response_compression_algorithm="gzip",
        )
        assert np.array_equal(gz.as_numpy("probabilities"), expected)


def _input(pixels: np.ndarray):
    tensor = triton.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    return tensor


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, format="PNG")
    return out.getvalue()


def test_classify_answers_what_local_predict_says(exported_run):
    model = exported_run / "export" / "model_int8.onnx"
    files = validation_files(exported_run)[:4]
    local = load(model).predict(files)
    with running_server(model) as server:
        for path, expected in zip(files, local):
            answer = httpx.post(f"{server.url}/v2/models/{server.name}/classify?top_k=2", content=path.read_bytes())
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert (body["label"], body["probabilities"]) == (expected.label, expected.probabilities)
            assert [k["label"] for k in body["top_k"]] == [k for k, _ in expected.top_k(2)]
            assert body["decision"] == load(model).info.decision and body["calibrated"] is load(model).info.calibrated


def test_bad_requests_get_json_errors_and_the_server_goes_on(exported_run):
    model = exported_run / "export" / "model_float32.onnx"
    good = _pixels(exported_run, 2)
    with running_server(model, "--max-body-mb", "0.5") as server:
        base = f"{server.url}/v2/models/{server.name}"
        wrong_shape = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 8, 8, 3], "data": [0] * 192}]}
        wrong_type = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 32, 32, 3], "data": [0.0] * 3072}]}
        huge = _png((8001, 8001), "1")  # a small file that claims 64 million pixels
        cases = [
            (httpx.post(f"{base}/infer", json=wrong_shape), 400, "shape"),
            (httpx.post(f"{base}/infer", json=wrong_type), 400, "UINT8"),
            (httpx.post(f"{base}/infer", content=b"{not json"), 400, "JSON"),
            (httpx.post(f"{base}/classify", content=b"GIF89a garbage"), 400, "not an image"),
            (httpx.post(f"{base}/classify", content=b""), 400, "empty body"),
            (httpx.post(f"{base}/classify", content=huge), 413, "too large"),
            (httpx.post(f"{base}/classify", content=b"x" * 600_000), 413, "limit"),
            (httpx.post(f"{base}/infer", content=gzip.compress(b" " * 2_000_000), headers={"Content-Encoding": "gzip"}), 413, "decoded body"),
            (httpx.post(f"{base}/infer", content=b"{}", headers={"Content-Encoding": "br"}), 415, "gzip"),
            (httpx.post(f"{server.url}/v2/models/other/infer", content=b"{}"), 404, "unknown model"),
            (httpx.post(f"{base}/versions/2/infer", content=b"{}"), 404, "no version"),
            (httpx.get(f"{base}/infer"), 405, "Method Not Allowed"),
            (httpx.get(f"{server.url}/v3"), 404, "Not Found"),
        ]  # fmt: skip
        for response, status, words in cases:
            assert response.status_code == status, (status, response.text)
            assert words in response.json()["error"], response.text
        client = triton.InferenceServerClient(server.address)
        probs = client.infer(server.name, [_input(good)]).as_numpy("probabilities")
        assert np.array_equal(probs, load(model).predict_arrays(good))
        assert server.metric("toolkit_request_errors_total") == len(cases)
        assert server.process.poll() is None


def test_metrics_count_requests_images_and_batches(exported_run):
    model = exported_run / "export" / "model_int8.onnx"
    pixels = _pixels(exported_run, 3)
    with running_server(model) as server:
        client = triton.InferenceServerClient(server.address)
        for _ in range(4):
            client.infer(server.name, [_input(pixels)])
        text = httpx.get(f"{server.url}/metrics").text
        assert f'toolkit_requests_total{{code="200",model="{server.name}",route="infer"}} 4.0' in text
        assert server.metric("toolkit_images_total") == 12
        assert server.metric("toolkit_batch_size_sum") == 12
        assert server.metric("toolkit_request_duration_seconds_count") >= 4


def test_sigterm_finishes_the_request_in_flight_then_exits_0(exported_run):
    model = exported_run / "export" / "model_float32.onnx"
    pixels = np.repeat(_pixels(exported_run, 1), 1000, axis=0)  # one request, 1000 single-image runs
    expected = load(model).predict_arrays(pixels[:1])
    answers = []
    with running_server(model, "--max-batch-size", "1") as server:
        client = triton.InferenceServerClient(server.address, network_timeout=300)
        worker = threading.Thread(target=lambda: answers.append(client.infer(server.name, [_input(pixels)])))
        worker.start()
        deadline = time.monotonic() + 120
        while server.metric("toolkit_batch_size_count") < 10:  # the request is being computed, batch by batch
            assert time.monotonic() < deadline and worker.is_alive()
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        worker.join(300)
        assert server.process.wait(60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/v2/health/live")
    probs = answers[0].as_numpy("probabilities")
    assert probs.shape == (1000, 2) and np.array_equal(probs[-1:], expected)
    assert server.stderr[-1] == "stopped"


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "serve", *args], capture_output=True, text=True, timeout=120
    )


def test_start_up_problems_are_one_line_and_exit_2(exported_run, tmp_path):
    model = exported_run / "export" / "model_int8.onnx"
    with running_server(model) as server:
        taken = server.url.rsplit(":", 1)[1]
        result = _serve(str(model), "--port", taken)
    assert result.returncode == 2 and "cannot listen on 127.0.0.1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    for args, words in (
        ([str(tmp_path / "none.onnx")], "not found"),
        ([str(model), "--model-name", "a/b"], "--model-name"),
        ([str(model), "--max-batch-size", "0"], "--max-batch-size"),
    ):
        result = _serve(*args)
        assert result.returncode == 2 and words in result.stderr, result.stderr
