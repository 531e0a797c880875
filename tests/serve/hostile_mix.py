"""A traffic mix of valid and hostile requests for a running server, shared by the slow load test and
`benchmarks/serve_hostile.py`: each client sends requests from the mix in turn and records what it got,
while a prober measures liveness and a sampler the server's resident memory (its parser processes included)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import numpy as np
from PIL import Image

MB = 1024 * 1024


@dataclasses.dataclass
class Outcome:
    kind: str
    status: int  # 0: no HTTP answer (a socket the client closed itself)
    retry_after: str | None = None
    probabilities: np.ndarray | None = None  # valid infer requests: what came back
    image: int = -1  # which of the valid images was sent


def _png(mode: str, side: int) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (side, side), (10, 20, 30, 40) if mode == "RGBA" else 0).save(out, format="PNG")
    return out.getvalue()


def _binary_infer(pixels: np.ndarray) -> tuple[bytes, dict]:
    header = json.dumps(
        {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(pixels.shape),
                     "parameters": {"binary_data_size": pixels.size}}],
         "outputs": [{"name": "probabilities"}]}
    ).encode()  # fmt: skip
    return header + pixels.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


class Mix:
    """The requests, built once: `send(i)` sends the i-th kind of the cycle through `client`."""

    def __init__(self, url: str, name: str, pixels: np.ndarray, jpeg: bytes):
        self.url, self.base, self.pixels, self.jpeg = url, f"{url}/v2/models/{name}", pixels, jpeg
        height, width = pixels.shape[1:3]
        flat = b"[" + b"0," * (8 * MB) + b"0]"  # 16 MB of JSON in a 16 KB gzip body
        self.json_bomb = gzip.compress(
            b'{"inputs":[{"name":"image","datatype":"UINT8","shape":[1,%d,%d,3],"data":' % (height, width)
            + flat
            + b"}]}"
        )
        self.huge_png = _png("RGBA", 7999)  # 260 KB that decodes to 256 MB
        self.cycle: list[tuple[str, Callable[[httpx.Client, int], Outcome]]] = [
            ("valid_infer", self._valid_infer),
            ("valid_classify", self._valid_classify),
            ("json_bomb", lambda c, i: self._post(c, "json_bomb", "/infer", self.json_bomb, {"Content-Encoding": "gzip"})),
            ("valid_infer", self._valid_infer),
            ("huge_png", lambda c, i: self._post(c, "huge_png", "/classify", self.huge_png)),
            ("nested", lambda c, i: self._post(c, "nested", "/infer", b"[" * 100_000 + b"]" * 100_000)),
            ("valid_infer", self._valid_infer),
            ("unicode_top_k", lambda c, i: self._post(c, "unicode_top_k", "/classify?top_k=%C2%B2", self.jpeg)),
            ("shape_overflow", self._shape_overflow),
            ("hang_up", self._hang_up),
            ("valid_classify", self._valid_classify),
            ("not_an_image", lambda c, i: self._post(c, "not_an_image", "/classify", b"GIF89a" + b"\0" * 1000)),
            ("too_large", lambda c, i: self._post(c, "too_large", "/infer", b"x" * (33 * MB))),
        ]  # fmt: skip

    def send(self, client: httpx.Client, i: int) -> Outcome:
        return self.cycle[i % len(self.cycle)][1](client, i)

    def _post(self, client, kind: str, path: str, body: bytes, headers: dict | None = None) -> Outcome:
        try:
            answer = client.post(self.base + path, content=body, headers=headers or {}, timeout=120)
        except httpx.TransportError:  # the server answered early (413 on Content-Length) and closed mid-upload
            return Outcome(kind, 0)
        return Outcome(kind, answer.status_code, answer.headers.get("retry-after"))

    def _valid_infer(self, client, i: int) -> Outcome:
        k = i % len(self.pixels)
        body, headers = _binary_infer(self.pixels[k : k + 1])
        answer = client.post(f"{self.base}/infer", content=body, headers=headers, timeout=120)
        probs = None
        if answer.status_code == 200:
            size = int(answer.headers.get("Inference-Header-Content-Length", len(answer.content)))
            head = json.loads(answer.content[:size])
            output = head["outputs"][0]
            probs = (
                np.frombuffer(answer.content[size:], np.float32)
                if "parameters" in output
                else np.asarray(output["data"], np.float32)
            ).reshape(output["shape"])[0]
        return Outcome("valid_infer", answer.status_code, answer.headers.get("retry-after"), probs, k)

    def _valid_classify(self, client, i: int) -> Outcome:
        return self._post(client, "valid_classify", "/classify?top_k=1", self.jpeg)

    def _shape_overflow(self, client, i: int) -> Outcome:
        height, width = self.pixels.shape[1:3]
        body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2**62 + 1, height, width, 3],
                            "data": [0] * (height * width * 3)}]}  # fmt: skip
        return self._post(client, "shape_overflow", "/infer", json.dumps(body).encode())

    def _hang_up(self, client, i: int) -> Outcome:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as raw:
            path = self.base.split(self.url, 1)[1] + "/infer"
            raw.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode() + b"{" * 1000)
        return Outcome("hang_up", 0)


def run_mix(mix: Mix, clients: int, per_client: int) -> list[Outcome]:
    """`clients` threads, each sending `per_client` requests of the mix, starting at a different point."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def one_client(c: int) -> None:
        with httpx.Client() as client:
            for i in range(per_client):
                outcome = mix.send(client, c + i)
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=one_client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


_PROBER = """
import json, sys, threading, time
import httpx
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
latencies = []
with httpx.Client() as client:
    while not stop.is_set():
        start = time.perf_counter()
        client.get(sys.argv[1] + "/v2/health/live", timeout=60).raise_for_status()
        latencies.append(time.perf_counter() - start)
        time.sleep(float(sys.argv[2]))
print(json.dumps(latencies))
"""


class Watch:
    """Liveness latency every `interval` s, probed from a process of its own (the load generators' threads
    share this process's GIL, which would delay a prober here and blame the server), and the resident
    memory of the server and its children."""

    def __init__(self, url: str, pid: int | None, interval: float = 0.05):
        self.url, self.pid, self.interval = url, pid, interval
        self.latencies: list[float] = []
        self.rss: list[int] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample) if pid else None
        self._prober: subprocess.Popen | None = None

    def __enter__(self) -> Watch:
        command = [sys.executable, "-c", _PROBER, self.url, str(self.interval)]
        self._prober = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._sampler:
            self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._sampler:
            self._sampler.join()
        out, _ = self._prober.communicate("", timeout=120)
        assert self._prober.returncode == 0, "a liveness probe failed"
        self.latencies = json.loads(out)

    def _sample(self) -> None:
        import psutil

        process = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                tree = [process, *process.children(recursive=True)]
                self.rss.append(sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(self.interval)


def summary(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    """Answers by kind and status."""
    table: dict[str, Counter] = {}
    for outcome in outcomes:
        table.setdefault(outcome.kind, Counter())[str(outcome.status)] += 1
    return {kind: dict(sorted(counts.items())) for kind, counts in sorted(table.items())}
