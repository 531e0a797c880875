"""`toolkit serve` in a subprocess on a free loopback port, for tests that need a real socket."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

START_TIMEOUT_S = 120


@dataclasses.dataclass
class Server:
    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    name: str
    stderr: list[str]

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    def metric(self, name: str) -> float:
        """The sum of every sample of one Prometheus metric (all labels)."""
        text = httpx.get(f"{self.url}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def _drain(stream, lines: list[str], first: threading.Event) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))
        if line.startswith("serving "):
            first.set()
    first.set()


@contextlib.contextmanager
def running_server(model: Path, *flags: str):
    """Start `toolkit serve MODEL --port 0 FLAGS`, wait until ready, yield it, stop it with SIGTERM."""
    command = [sys.executable, "-m", "toolkit.cli", "serve", str(model), "--port", "0", *flags]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    announced = threading.Event()
    threading.Thread(target=_drain, args=(process.stderr, lines, announced), daemon=True).start()
    try:
        assert announced.wait(START_TIMEOUT_S), "toolkit serve did not start"
        serving = next((line for line in lines if line.startswith("serving ")), None)
        assert serving, "\n".join(lines)
        url = serving.rsplit(" at ", 1)[1]
        name = serving.split()[1]
        deadline = time.monotonic() + START_TIMEOUT_S
        while httpx.get(f"{url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        yield Server(process, url, name, lines)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def single_image_requests(
    address: str, name: str, pixels: np.ndarray, requests: int, offset: int
) -> list[tuple[int, np.ndarray, float]]:
    """One tritonclient client sending `requests` one-image binary requests, cycling through `pixels` from
    `offset`: (image index, probabilities, seconds the request took) per request."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(address, network_timeout=600)
    answers = []
    for i in range(requests):
        k = (offset + i) % len(pixels)
        tensor = triton.InferInput("image", [1, *pixels.shape[1:]], "UINT8")
        tensor.set_data_from_numpy(pixels[k : k + 1], binary_data=True)
        start = time.perf_counter()
        probs = client.infer(name, [tensor]).as_numpy("probabilities")[0]
        answers.append((k, probs, time.perf_counter() - start))
    client.close()
    return answers
