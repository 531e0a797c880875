"""The shutdown sequence on a real socket, in-process (uvicorn in a thread, a stub model): readiness turns 503
while the listener still accepts, requests arriving in the drain window are served, and a request still
running when the graceful timeout expires gets a JSON 503, with no traceback."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.serve.stub import SIZE, serving
from toolkit.serve.options import ServeOptions

BODY = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, *SIZE, 3], "data": [51] * 192}]}


def _infer(url: str, out: list) -> None:
    out.append((httpx.post(f"{url}/v2/models/stub/infer", json=BODY, timeout=30), time.monotonic()))


def test_readiness_turns_503_before_the_listener_closes_and_the_drain_window_still_serves():
    options = ServeOptions(drain_s=1.5, graceful_timeout_s=5)
    with serving(options) as (server, url, _):
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        time.sleep(0.4)  # uvicorn notices within 0.1 s
        ready = httpx.get(f"{url}/v2/health/ready")  # not "connection refused"
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        assert httpx.get(f"{url}/v2/models/stub/ready").status_code == 503
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        answer = httpx.post(f"{url}/v2/models/stub/infer", json=BODY)
        assert answer.status_code == 200, answer.text  # a request in the drain window is served
        time.sleep(1.6)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/v2/health/live")


def test_a_request_past_the_graceful_timeout_gets_a_json_503_and_no_traceback(capfd):
    options = ServeOptions(drain_s=0, graceful_timeout_s=0.5, max_batch_size=1)
    answers: list = []
    with serving(options, delay=5.0) as (server, url, app):
        client = threading.Thread(target=_infer, args=(url, answers))
        client.start()
        backend = app.state.toolkit.model.first.backend
        assert backend.started.wait(10)  # the request is in its model run
        started = time.monotonic()
        server.should_exit = True
        client.join(30)
    answer, answered = answers[0]
    assert answer.status_code == 503, answer.text
    assert "graceful timeout" in answer.json()["error"]
    assert answered - started < 4  # answered at the graceful timeout, not when the 5 s model run ended
    assert "Traceback" not in capfd.readouterr().err
