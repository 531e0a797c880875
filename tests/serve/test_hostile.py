"""The cases a hostile or careless client found (issue #46), each on a real socket in-process (stub model):
a large JSON body no longer stalls the event loop, image decoding stays within the decode budget, a
trickled request head or body is cut off, and gzip is answered."""

from __future__ import annotations

import gzip
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.memory import peak, reset_peak
from tests.serve.stub import SIZE, serving
from toolkit.serve.options import ServeOptions

MB = 1024 * 1024


def _json_bomb(megabytes: int) -> bytes:
    """A gzip body of a few KB that inflates to `megabytes` of infer JSON (whose data then has the wrong count)."""
    data = b"[" + b"0," * (megabytes * MB // 2) + b"0]"
    head = b'{"inputs":[{"name":"image","datatype":"UINT8","shape":[1,%d,%d,3],"data":' % SIZE
    return gzip.compress(head + data + b"}]}", 6)


def _probe(url: str, stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client() as client:
        while not stop.is_set():
            start = time.perf_counter()
            assert client.get(f"{url}/v2/health/live", timeout=30).status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)


def test_large_json_bodies_are_parsed_off_the_event_loop_and_liveness_keeps_answering():
    bomb = _json_bomb(16)  # parsed on the event loop, each took about 1 s on a 2-core Xeon
    assert len(bomb) < 64 * 1024
    options = ServeOptions(max_decode_mb=4096)
    with serving(options) as (_, url, _app):
        stop, latencies = threading.Event(), []
        prober = threading.Thread(target=_probe, args=(url, stop, latencies))
        prober.start()
        time.sleep(0.2)
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(
                    lambda _: httpx.post(
                        f"{url}/v2/models/stub/infer", content=bomb, headers={"Content-Encoding": "gzip"}, timeout=60
                    ),
                    range(4),
                )
            )
        stop.set()
        prober.join()
    assert [a.status_code for a in answers] == [400] * 4, [a.text for a in answers]
    assert "integers" in answers[0].json()["error"]
    assert len(latencies) > 5 and max(latencies) < 0.5, max(latencies)


def _rgba_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (side, side), (10, 20, 30, 40)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.slow  # three 64-megapixel decodes
def test_huge_images_decode_within_the_budget_and_the_rest_wait_or_get_503():
    png = _rgba_png(7999)  # 260 KB that decodes to 256 MB
    assert len(png) < 400 * 1024
    options = ServeOptions(max_decode_mb=700)
    with serving(options) as (_, url, app):
        before = reset_peak()
        with ThreadPoolExecutor(3) as pool:
            answers = list(
                pool.map(lambda _: httpx.post(f"{url}/v2/models/stub/classify", content=png, timeout=120), range(3))
            )
        grown = peak() - before
        budget = app.state.toolkit.budget
    codes = sorted(a.status_code for a in answers)
    assert codes[0] == 200 and set(codes) <= {200, 503}, [a.text for a in answers]
    assert all(a.headers["Retry-After"] == "1" for a in answers if a.status_code == 503)
    assert budget.peak <= budget.total and budget.used == 0
    assert grown < 700 * MB + 100 * MB, grown / MB  # three at once grew 3.3 GB before the budget


def test_an_image_that_can_never_fit_the_budget_is_413():
    with serving(ServeOptions(max_body_mb=1, max_decode_mb=64)) as (_, url, _app):
        answer = httpx.post(f"{url}/v2/models/stub/classify", content=_rgba_png(5000), timeout=60)
    assert answer.status_code == 413 and "decode budget" in answer.json()["error"]


def test_a_trickled_request_head_is_cut_off_and_a_prompt_one_is_answered():
    with serving(ServeOptions(header_timeout_s=0.5)) as (_, url, _app):
        port = int(url.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        slow.settimeout(5)
        start = time.monotonic()
        assert slow.recv(1024) == b""  # closed by the server
        assert 0.4 < time.monotonic() - start < 3
        assert httpx.get(f"{url}/v2/health/live").status_code == 200


def test_a_body_that_does_not_arrive_in_time_is_408():
    with serving(ServeOptions(body_timeout_s=0.5)) as (_, url, _app):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(b"POST /v2/models/stub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}")
            slow.settimeout(5)
            answer = b""
            while b"did not arrive" not in answer and (chunk := slow.recv(4096)):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer


def test_accept_encoding_gzip_is_answered():
    with serving(ServeOptions()) as (_, url, _app):
        httpx.get(f"{url}/v2/health/live")  # so that /metrics is over the 1 KB worth compressing
        answer = httpx.get(f"{url}/metrics", headers={"Accept-Encoding": "gzip"})
    assert answer.headers["content-encoding"] == "gzip" and b"toolkit_requests_total" in answer.content
