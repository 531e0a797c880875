"""The HTTP routes: the Open Inference Protocol v2 (health, metadata, infer), `/classify` and `/metrics`.

Every answer is JSON (binary infer responses excepted); every error is a 4xx or 5xx
with `{"error": "..."}`, as the protocol specifies, and never stops the server: a
bad request fails alone, a model failure fails its batch alone. Paths follow KServe
v2 and Triton, with or without `/versions/1`, so `tritonclient.http` works unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import re
import time
import uuid

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from toolkit import __version__
from toolkit.errors import DatasetError, ImageTooLargeError, ProtocolError, ServerClosingError, ToolkitError
from toolkit.imaging import decode_cost, load_image_array
from toolkit.runtime import Classifier
from toolkit.serve.batcher import DynamicBatcher
from toolkit.serve.budget import JSON_BYTES_FACTOR, DecodeBudget
from toolkit.serve.lifecycle import Lifecycle
from toolkit.serve.metrics import ServerMetrics
from toolkit.serve.offload import INLINE_JSON_BYTES, Offload, json_bytes
from toolkit.serve.options import ServeOptions
from toolkit.serve.protocol import (
    HEADER_LENGTH,
    ModelSignature,
    ascii_int,
    decode_body,
    encode_infer_response,
)

VERSION = "1"  # one model, one version: the file served
PLATFORMS = {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_lite", "openvino": "openvino", "keras": "keras"}
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "metrics"]
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # a client's X-Request-ID is kept when it is this plain
CLIENT_CLOSED = 499  # nginx's code for a client that hung up before its answer: counted, never a 5xx
log = logging.getLogger("toolkit.serve")


@dataclasses.dataclass
class ServedModel:
    """The one model a server answers for: its name, its loaded copies (one per worker) and its signature."""

    name: str
    classifiers: list[Classifier]
    signature: ModelSignature = dataclasses.field(init=False)  # what the input must be: fixed once loaded
    platform: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        height, width = self.first.image_size
        self.signature = ModelSignature(height, width, tuple(self.first.labels))
        self.platform = PLATFORMS.get(self.first.format, self.first.format)

    @property
    def first(self) -> Classifier:
        return self.classifiers[0]


class _State:
    def __init__(self, model: ServedModel, options: ServeOptions):
        self.model = model
        self.options = options
        self.metrics = ServerMetrics(model.name, options.max_batch_size)
        self.batcher = DynamicBatcher(
            model.classifiers, options.max_batch_size, options.max_wait_ms, self.metrics.observe_batch
        )
        self.lifecycle = Lifecycle()
        self.lifecycle.on_expire(self.batcher.abandon)
        self.budget = DecodeBudget(options.max_decode_bytes)
        cores = os.cpu_count() or 1
        self.offload = Offload(threads=cores, processes=max(1, min(2, cores // 2)))


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _identified(request: Request, response: Response) -> Response:
    """The answer with its X-Request-ID; a 5xx is also logged with it, so a client's report can be found."""
    request_id = _request_id(request)
    response.headers["X-Request-ID"] = request_id
    if response.status_code >= 500:
        log.error("request %s: %s %s answered %d: %s", request_id, request.method, request.url.path,
                  response.status_code, bytes(response.body).decode(errors="replace"))  # fmt: skip
    return response


def _measured(route: str):
    """Times the handler, turns the errors a client can cause into JSON answers, and counts the answer.

    Every answer carries an `X-Request-ID` (the client's, or a new one); every 5xx is logged with it, so a
    client's report can be found in the server's log.
    """

    def wrap(handler):
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            state: _State = request.app.state.toolkit
            start = time.perf_counter()
            state.metrics.in_flight.inc()
            task = asyncio.current_task()
            state.lifecycle.track(task)
            try:
                response = await handler(request, state)
            except asyncio.CancelledError:
                if not state.lifecycle.expired:
                    raise
                task.uncancel()  # cut short by the graceful timeout: answered, as every other request is
                response = _error(
                    "the server is shutting down: the request did not finish in its graceful timeout", 503
                )
            except ClientDisconnect:  # nobody will read the answer; the client's doing, not the server's
                response = _error("the client closed the connection before its request was read", CLIENT_CLOSED)
            except ProtocolError as exc:
                response = _error(str(exc), exc.status)
                if exc.retry_after_s is not None:
                    response.headers["Retry-After"] = str(exc.retry_after_s)
            except ImageTooLargeError as exc:
                response = _error(f"image refused: {exc}", 413)
            except DatasetError as exc:
                response = _error(f"not an image this server can read: {exc}", 400)
            except ServerClosingError as exc:
                response = _error(str(exc), 503)
            except ToolkitError as exc:
                response = _error(str(exc), 500)
            except Exception as exc:  # a model or library failure: this request fails, the server goes on
                response = _error(f"internal error ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})", 500)
            finally:
                state.metrics.in_flight.dec()
                state.lifecycle.untrack(task)
            _identified(request, response)
            state.metrics.observe_request(route, response.status_code, time.perf_counter() - start)
            return response

        return endpoint

    return wrap


def _check_model(request: Request, state: _State) -> None:
    name = request.path_params["name"]
    version = request.path_params.get("version", VERSION)
    if name != state.model.name:
        raise ProtocolError(f"unknown model {name!r}: this server serves {state.model.name!r}", 404)
    if version != VERSION:
        raise ProtocolError(f"model {name!r} has no version {version!r} (only {VERSION!r})", 404)


async def _body(request: Request, state: _State) -> bytes:
    """The request body, refused with 413 as soon as it passes the limit (before and after decoding) and
    with 408 when it does not arrive within the body timeout; inflation runs off the event loop."""
    limit = state.options.max_body_bytes
    declared = ascii_int(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise ProtocolError(f"the body ({declared} bytes) exceeds the {limit} byte limit", 413)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(state.options.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ProtocolError(f"the body exceeds the {limit} byte limit", 413)
                chunks.append(chunk)
    except TimeoutError:
        raise ProtocolError(f"the body did not arrive within {state.options.body_timeout_s:g} s", 408) from None
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding")
    if (encoding or "identity").strip().lower() == "identity":
        return body
    async with state.budget.hold(limit, "the decompressed body"):
        return await state.offload.in_thread(decode_body, body, encoding, limit)


@_measured("server_metadata")
async def server_metadata(request: Request, state: _State) -> Response:
    return JSONResponse({"name": "toolkit", "version": __version__, "extensions": EXTENSIONS})


@_measured("live")
async def live(request: Request, state: _State) -> Response:
    return JSONResponse({"live": True})


@_measured("ready")
async def ready(request: Request, state: _State) -> Response:
    if state.lifecycle.stopping or state.batcher.closed:
        return JSONResponse({"ready": False}, status_code=503)
    return JSONResponse({"ready": True})


@_measured("model_ready")
async def model_ready(request: Request, state: _State) -> Response:
    _check_model(request, state)
    is_ready = not (state.lifecycle.stopping or state.batcher.closed)
    return JSONResponse({"name": state.model.name, "ready": is_ready}, status_code=200 if is_ready else 503)


@_measured("model_metadata")
async def model_metadata(request: Request, state: _State) -> Response:
    _check_model(request, state)
    inputs, outputs = state.model.signature.metadata()
    return JSONResponse(
        {
            "name": state.model.name,
            "versions": [VERSION],
            "platform": state.model.platform,
            "inputs": inputs,
            "outputs": outputs,
            "facts": state.model.first.info.to_json(),  # the model-facts record the file carries (labels, decision, input)
        }
    )


@_measured("model_config")
async def model_config(request: Request, state: _State) -> Response:
    """Triton's model-configuration extension: what batching the server applies."""
    _check_model(request, state)
    inputs, outputs = state.model.signature.metadata()
    strip = lambda t: {"name": t["name"], "data_type": f"TYPE_{t['datatype']}", "dims": t["shape"][1:]}  # noqa: E731
    return JSONResponse(
        {
            "name": state.model.name,
            "platform": state.model.platform,
            "max_batch_size": state.options.max_batch_size,
            "input": [strip(t) for t in inputs],
            "output": [strip(t) for t in outputs],
            "dynamic_batching": {"max_queue_delay_microseconds": int(state.options.max_wait_ms * 1000)},
            "instance_group": [{"count": len(state.model.classifiers), "kind": "KIND_CPU"}],
        }
    )


@_measured("infer")
async def infer(request: Request, state: _State) -> Response:
    _check_model(request, state)
    body = await _body(request, state)
    header_length = request.headers.get(HEADER_LENGTH)
    size = json_bytes(body, header_length)
    async with state.budget.hold(JSON_BYTES_FACTOR * size if size > INLINE_JSON_BYTES else 0, "the JSON"):
        parsed = await state.offload.parse_infer(body, header_length, state.model.signature)
    del body
    probs = await state.batcher.submit(parsed.pixels)
    first = state.model.first
    labels = [first.labels[i] for i in first.decide(probs)]
    content, headers, media = encode_infer_response(state.model.name, parsed, probs, labels)
    return Response(content, headers=headers, media_type=media)


@_measured("classify")
async def classify(request: Request, state: _State) -> Response:
    """One encoded image (JPEG, PNG, ...) as the body; the label at the model's operating point."""
    _check_model(request, state)
    text = request.query_params.get("top_k", "0")
    top_k = ascii_int(text, max_digits=9)
    if top_k is None:
        raise ProtocolError(f"top_k must be a whole number (up to 9 digits), got {text[:20]!r}")
    first = state.model.first
    body = await _body(request, state)
    if not body:
        raise ProtocolError("empty body: send the image file's bytes")
    cost = await state.offload.in_thread(decode_cost, body, first.image_size)  # from the header alone
    async with state.budget.hold(cost, "the image"):
        pixels = await state.offload.in_thread(load_image_array, body, first.image_size)
    del body
    probs = await state.batcher.submit(pixels[None])
    prediction = first.to_prediction(np.asarray(probs[0]))
    answer = {
        "model_name": state.model.name,
        "label": prediction.label,
        "score": prediction.score,
        "index": prediction.index,
        "probabilities": prediction.probabilities,
        "decision": first.info.decision,
        "calibrated": first.info.calibrated,  # whether the probabilities were calibrated (a folded temperature)
    }
    if top_k:
        answer["top_k"] = [{"label": k, "probability": p} for k, p in prediction.top_k(top_k)]
    return JSONResponse(answer)


@_measured("metrics")
async def metrics(request: Request, state: _State) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


def _model_routes(suffix: str, endpoint, methods: list[str]) -> list[Route]:
    return [
        Route(f"/v2/models/{{name}}{suffix}", endpoint, methods=methods),
        Route(f"/v2/models/{{name}}/versions/{{version}}{suffix}", endpoint, methods=methods),
    ]


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """An unknown path or method: JSON like every other answer, and counted (route "unmatched")."""
    request.app.state.toolkit.metrics.observe_request("unmatched", exc.status_code, 0.0)
    return _error(str(exc.detail), exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A failure outside every route's own handling: JSON like every other answer, logged with its request id."""
    return _identified(request, _error(f"internal error ({type(exc).__name__}); the server goes on", 500))


def build_app(model: ServedModel, options: ServeOptions) -> Starlette:
    """The ASGI application for `model`; its lifespan starts the batch workers and, at shutdown, drains them."""
    state = _State(model, options)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        state.batcher.start()
        state.offload.start()
        try:
            yield
        finally:
            await state.batcher.close()
            state.offload.close()

    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        *_model_routes("", model_metadata, ["GET"]),
        *_model_routes("/ready", model_ready, ["GET"]),
        *_model_routes("/config", model_config, ["GET"]),
        *_model_routes("/infer", infer, ["POST"]),
        *_model_routes("/classify", classify, ["POST"]),
        Route("/metrics", metrics),
    ]
    handlers = {HTTPException: _http_error, Exception: _internal_error}
    middleware = [Middleware(GZipMiddleware, minimum_size=1024)]  # answers Accept-Encoding: gzip
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers, middleware=middleware)
    app.state.toolkit = state
    return app
