"""The server's Prometheus metrics, on a registry of its own (so two apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """Requests, errors, batch sizes and latency, labelled by model and route."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str, max_batch_size: int):
        self.model = model
        self.registry = CollectorRegistry()
        labels = ("model", "route", "code")
        self.requests = Counter(
            "toolkit_requests", "Requests answered, by route and HTTP status", labels, registry=self.registry
        )
        self.errors = Counter(
            "toolkit_request_errors", "Requests answered with a 4xx or 5xx status", labels, registry=self.registry
        )
        self.latency = Histogram(
            "toolkit_request_duration_seconds",
            "Time from a request's arrival to its answer",
            ("model", "route"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        buckets = sorted({2**i for i in range(max_batch_size.bit_length() + 1)} | {max_batch_size})
        self.batch_size = Histogram(
            "toolkit_batch_size", "Images per model run (dynamic batching)", ("model",), buckets=buckets,
            registry=self.registry,
        )  # fmt: skip
        self.inference = Histogram(
            "toolkit_inference_duration_seconds", "Time one batch spends in the model", ("model",),
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.images = Counter("toolkit_images", "Images classified", ("model",), registry=self.registry)
        self.in_flight = Gauge("toolkit_requests_in_flight", "Requests being answered", registry=self.registry)

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(self.model, route, str(code)).inc()
        if code >= 400:
            self.errors.labels(self.model, route, str(code)).inc()
        self.latency.labels(self.model, route).observe(seconds)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.labels(self.model).observe(images)
        self.inference.labels(self.model).observe(seconds)
        self.images.labels(self.model).inc(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)
