"""What `toolkit serve` is asked to do: the only home of its defaults (the CLI reads them from here)."""

from __future__ import annotations

import dataclasses

from toolkit.runtime.base import Device


@dataclasses.dataclass
class ServeOptions:
    host: str = "127.0.0.1"  # loopback: exposing a model is the user's decision (--host 0.0.0.0)
    port: int = 8000  # 0: any free port (the chosen one is printed)
    max_batch_size: int = 8  # images per model run; requests within max_wait_ms are merged up to this
    max_wait_ms: float = 5.0  # how long a batch waits for more requests before it runs
    workers: int = 1  # loaded copies of the model, each running one batch at a time (Triton's instance count)
    model_name: str | None = None  # default: the model file's stem, e.g. model_int8
    device: str = Device.auto
    threads: int | None = None  # intra-op threads per worker (default: the cores shared among the workers)
    verify: bool = True
    max_body_mb: float = 32.0  # a request body (after any gzip/deflate decoding) above this gets 413
    max_decode_mb: float = 1024.0  # memory all requests together may hold while read and decoded (else 413/503)
    header_timeout_s: float = 10.0  # a connection that has not sent a request's headers in this long is closed
    body_timeout_s: float = 60.0  # a request body not received in this long gets 408
    drain_s: float = 1.0  # on SIGTERM/SIGINT: readiness answers 503 this long before the listener closes
    graceful_timeout_s: float = 30.0  # then: finish in-flight requests for at most this long

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_decode_bytes(self) -> int:
        return int(self.max_decode_mb * 1024 * 1024)
