"""The app in-process (no socket, a stub model): what hostile or careless clients send gets a JSON 4xx,
never a 5xx, and the server answers the next request as before."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from tests.serve.stub import FAIL, SIZE, stub_app

INFER = "/v2/models/stub/infer"
CLASSIFY = "/v2/models/stub/classify"


@pytest.fixture(scope="module")
def client():
    with TestClient(stub_app(), raise_server_exceptions=False) as c:
        yield c


def _png(value: int = 200) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", SIZE, (value, 0, 0)).save(out, format="PNG")
    return out.getvalue()


def _infer_body(n: int = 1, value: int = 51) -> dict:
    return {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [n, *SIZE, 3], "data": [value] * (n * 192)}]}


def _assert_client_error(response, words: str) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert words in response.json()["error"], response.text


def test_a_good_request_is_answered(client):
    answer = client.post(INFER, json=_infer_body(2))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == pytest.approx([0.8, 0.2] * 2)


@pytest.mark.parametrize("top_k", ["\u00b2", "\u0663", "9" * 5000, "-1", "1.5"])
def test_top_k_that_is_not_an_ascii_whole_number_is_400(client, top_k):
    _assert_client_error(client.post(CLASSIFY, params={"top_k": top_k}, content=_png()), "top_k")


def test_json_nested_100000_deep_is_400(client):
    body = b"[" * 100_000 + b"]" * 100_000
    _assert_client_error(client.post(INFER, content=body), "nested too deeply")
    deep_data = _infer_body()
    deep_data["inputs"][0]["data"] = json.loads("[" * 500 + "]" * 500)  # deep, but within the JSON parser's reach
    _assert_client_error(client.post(INFER, json=deep_data), "data")


@pytest.mark.parametrize("first", [2**62 + 1, 2**63, 10**30])
def test_a_shape_whose_product_overflows_int64_is_400(client, first):
    body = _infer_body()
    body["inputs"][0]["shape"] = [first, *SIZE, 3]
    _assert_client_error(client.post(INFER, json=body), "shape")


def test_after_all_that_the_server_still_answers(client):
    client.post(INFER, content=b"[" * 100_000)
    answer = client.post(CLASSIFY, params={"top_k": "1"}, content=_png(255))
    assert answer.status_code == 200 and answer.json()["label"] == "dog"


# Bodies built from the request schema, with every field free to be any JSON value: never a 5xx.
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_dims = st.lists(st.one_of(st.integers(-(2**64), 2**64), st.just(SIZE[0]), st.just(3), _json), max_size=5)
_tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["image", "x"]) | _json,
        "datatype": st.sampled_from(["UINT8", "FP32", "BYTES"]) | _json,
        "shape": st.integers(-(2**70), 2**70).map(lambda n: [n, *SIZE, 3]) | _dims | _json,
        "data": st.lists(st.integers(-300, 300), max_size=200) | _json,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-5, 500) | _json}) | _json,
    },
)
_request = st.fixed_dictionaries(
    {},
    optional={
        "id": _json,
        "inputs": st.lists(_tensor, max_size=2) | _json,
        "outputs": st.lists(st.fixed_dictionaries({}, optional={"name": _json, "parameters": _json})) | _json,
        "parameters": _json,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    request=_request,
    binary=st.binary(max_size=64),
    header_length=st.none() | st.integers(-5, 400).map(str) | st.sampled_from(["\u00b2", "9" * 30, "x"]),
)
def test_no_malformed_body_gets_a_5xx(client, request, binary, header_length):
    header = json.dumps(request).encode()
    headers = {} if header_length is None else {"Inference-Header-Content-Length": header_length.encode("latin-1")}
    answer = client.post(INFER, content=header + binary, headers=headers)
    assert answer.status_code < 500, answer.text
    if answer.status_code != 200:
        assert answer.json()["error"]


async def _send_half_then_hang_up(app) -> list[dict]:
    """One raw ASGI request whose client disconnects after the first chunk of its body: what the app sends."""
    messages = iter([{"type": "http.request", "body": b'{"inputs": [', "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict] = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": INFER, "raw_path": INFER.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-length", b"1000")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
        "app": app,
    }  # fmt: skip
    await app(scope, receive, send)
    return sent


def test_a_client_that_hangs_up_mid_body_is_counted_499_not_5xx():
    app = stub_app()
    sent = asyncio.run(_send_half_then_hang_up(app))
    assert sent[0]["status"] == 499
    text = app.state.toolkit.metrics.render().decode()
    assert 'code="499"' in text and 'code="5' not in text


def test_every_5xx_is_logged_with_the_request_id_the_client_sees(client, caplog):
    caplog.set_level(logging.ERROR, logger="toolkit.serve")
    answer = client.post(INFER, json=_infer_body(value=FAIL), headers={"X-Request-ID": "trace-42"})
    assert answer.status_code == 500 and answer.headers["X-Request-ID"] == "trace-42"
    assert [r.getMessage() for r in caplog.records if "trace-42" in r.getMessage() and "500" in r.getMessage()]
    other = client.post(INFER, json=_infer_body(), headers={"X-Request-ID": "not plain \u00e9".encode("latin-1")})
    assert other.status_code == 200 and len(other.headers["X-Request-ID"]) == 32  # replaced by a fresh id
