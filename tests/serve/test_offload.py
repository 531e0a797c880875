"""Off-loop parsing: the parser process gives what parsing in place gives, a dead parser is replaced, and the
budget's JSON factor bounds what a parse really takes (VmHWM of a fresh process)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.memory import PRELUDE
from toolkit.errors import ProtocolError
from toolkit.serve.budget import JSON_BYTES_FACTOR
from toolkit.serve.offload import INLINE_JSON_BYTES, Offload
from toolkit.serve.protocol import ModelSignature, parse_infer_request

SIGNATURE = ModelSignature(64, 64, ("a", "b"))


def _large_request(n: int = 8) -> bytes:
    pixels = np.arange(n * 64 * 64 * 3, dtype=np.uint32).reshape(n, 64, 64, 3) % 251
    body = json.dumps({"id": "r", "inputs": [{"name": "image", "datatype": "UINT8", "shape": list(pixels.shape),
                                                "data": pixels.tolist()}]}).encode()  # fmt: skip
    assert len(body) > INLINE_JSON_BYTES
    return body


async def _with_offload(work):
    offload = Offload(threads=1, processes=1)
    offload.start()
    try:
        return await work(offload)
    finally:
        offload.close()


def test_a_large_body_parsed_in_a_process_equals_the_same_parsed_in_place():
    body = _large_request()
    parsed = asyncio.run(_with_offload(lambda o: o.parse_infer(body, None, SIGNATURE)))
    expected = parse_infer_request(body, None, SIGNATURE)
    assert np.array_equal(parsed.pixels, expected.pixels) and parsed.id == "r"


def test_a_client_error_raised_in_the_parser_process_keeps_its_status():
    body = _large_request().replace(b'"UINT8"', b'"FP32"')
    with pytest.raises(ProtocolError, match="UINT8") as raised:
        asyncio.run(_with_offload(lambda o: o.parse_infer(body, None, SIGNATURE)))
    assert raised.value.status == 400


def test_a_killed_parser_process_is_answered_503_once_then_replaced():
    body = _large_request()

    async def work(offload):
        await offload.parse_infer(body, None, SIGNATURE)  # the process is up
        for pid in list(offload.processes._processes):
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        with pytest.raises(ProtocolError) as raised:
            await offload.parse_infer(body, None, SIGNATURE)
        assert raised.value.status == 503 and raised.value.retry_after_s == 1
        return await offload.parse_infer(body, None, SIGNATURE)

    assert asyncio.run(_with_offload(work)).pixels.shape == (8, 64, 64, 3)


_PEAK = (
    PRELUDE
    + """
import gc, sys
from toolkit.serve.protocol import ModelSignature, parse_infer_request
body = open(sys.argv[1], "rb").read()
gc.collect()
before = reset_peak()
try:
    parse_infer_request(body, None, ModelSignature(64, 64, ("a", "b")))
except Exception:
    pass
print(peak() - before)
"""
)


@pytest.mark.parametrize("item", ["0", "[0]", "{}", "[]", "0.5", "[[0,0,0]]"])
def test_the_json_factor_bounds_what_a_parse_takes(tmp_path, item):
    count = 2_000_000 // (len(item) + 1)
    data = ",".join([item] * count)
    body = f'{{"inputs":[{{"name":"image","datatype":"UINT8","shape":[1,64,64,3],"data":[{data}]}}]}}'.encode()
    path = tmp_path / "body.json"
    path.write_bytes(body)
    run = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, check=True)
    assert int(run.stdout) <= JSON_BYTES_FACTOR * len(body), (int(run.stdout) / len(body), item)
