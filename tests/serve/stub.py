"""A served model without a model file: a real `Classifier` over a backend that computes its answer from the
pixels (and can be told to be slow), so the app's routes run in-process in milliseconds."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np

from toolkit.runtime import Classifier, foreign_facts
from toolkit.runtime.base import Backend
from toolkit.serve.app import ServedModel, build_app
from toolkit.serve.options import ServeOptions
from toolkit.serve.server import bind, make_server

SIZE = (8, 8)
LABELS = ("cat", "dog")
FAIL = 99


class StubBackend(Backend):
    """Probability of "dog" = the first pixel's value / 255; each run sleeps `delay` seconds first; a batch
    whose first pixel is `FAIL` raises, as a model failing on its input would."""

    kind = "onnx"
    image_size = SIZE

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.runs = 0
        self.started = threading.Event()  # set when a run begins (tests that stop the server mid-run)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.started.set()
        time.sleep(self.delay)
        self.runs += 1
        if (batch.reshape(len(batch), -1)[:, 0] == FAIL).any():
            raise RuntimeError("the model failed")
        dog = batch.reshape(len(batch), -1)[:, 0].astype(np.float32) / 255.0
        return np.stack([1.0 - dog, dog], axis=1)


def stub_classifier(delay: float = 0.0) -> Classifier:
    return Classifier(StubBackend(delay), foreign_facts(LABELS, SIZE, "0..255"), "argument", Path("stub.onnx"))


def stub_app(options: ServeOptions | None = None, delay: float = 0.0):
    """The ASGI app serving one stub model named "stub"."""
    return build_app(ServedModel("stub", [stub_classifier(delay)]), options or ServeOptions())


@contextlib.contextmanager
def serving(options: ServeOptions, delay: float = 0.0):
    """uvicorn serving a stub app on a free loopback port; stop with `server.should_exit = True` (as SIGTERM)."""
    app = stub_app(options, delay)
    sock = bind("127.0.0.1", 0)
    server = make_server(app, options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "never started"
        time.sleep(0.01)
    try:
        yield server, f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
