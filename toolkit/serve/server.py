"""Start `toolkit serve`: load one model copy per worker, bind the socket, run uvicorn until a signal.

The socket is bound here, before uvicorn starts, so a taken port or a wrong address is
one line and exit 2 instead of a log page; `--port 0` takes any free port and the
line printed names the one chosen. On SIGTERM or SIGINT the shutdown follows
`toolkit.serve.lifecycle`: readiness 503 for `drain_s`, then uvicorn stops accepting
and lets in-flight requests finish (at most `graceful_timeout_s`, after which they
are answered 503), the app's lifespan drains the batch queue, and `serve` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from toolkit.errors import MissingDependencyError, ServeError
from toolkit.runtime import load
from toolkit.serve.options import ServeOptions

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # safe in a URL path segment, as Triton's model names


@dataclasses.dataclass
class Listening:
    url: str  # http://host:port
    model_name: str
    description: str  # what runs: format, provider, workers, batching


def check_options(options: ServeOptions) -> None:
    if options.max_batch_size < 1:
        raise ServeError("--max-batch-size must be at least 1")
    if options.max_wait_ms < 0:
        raise ServeError("--max-wait-ms must be 0 or more")
    if options.workers < 1:
        raise ServeError("--workers must be at least 1")
    if not 0 <= options.port <= 65535:
        raise ServeError(f"--port must be 0..65535, got {options.port}")
    if options.drain_s < 0 or options.graceful_timeout_s < 0:
        raise ServeError("--drain-s and --graceful-timeout-s must be 0 or more")
    if options.max_body_mb <= 0:
        raise ServeError("--max-body-mb must be more than 0")
    if options.max_decode_mb < options.max_body_mb:
        raise ServeError("--max-decode-mb must be at least --max-body-mb (a body is held while it is decoded)")
    if options.header_timeout_s <= 0 or options.body_timeout_s <= 0:
        raise ServeError("--header-timeout-s and --body-timeout-s must be more than 0")
    if options.model_name is not None and not NAME.match(options.model_name):
        raise ServeError(f"--model-name {options.model_name!r}: use letters, digits, '_', '.', '-' (up to 128)")


def _import_server():
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise MissingDependencyError(
            "toolkit serve needs the [serve] extra (uvicorn, starlette, prometheus-client): pip install 'toolkit[serve]'"
        ) from None
    return uvicorn


def load_copies(model: Path, options: ServeOptions, loader: Callable = load) -> list:
    """One loaded model per worker; the cores are shared among them unless `threads` says otherwise."""
    threads = options.threads or max(1, (os.cpu_count() or 1) // options.workers)
    return [
        loader(model, device=options.device, threads=threads, verify=options.verify) for _ in range(options.workers)
    ]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or a one-line ServeError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServeError(f"--host {host}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    model: Path, options: ServeOptions, on_listening: Callable[[Listening], None], loader: Callable = load
) -> None:
    """Serve `model` until SIGTERM/SIGINT; `on_listening` is told the address once the socket is bound."""
    check_options(options)
    _import_server()  # a missing [serve] extra is one line before any model loads
    from toolkit.serve.app import ServedModel, build_app

    _log_to_stderr()
    copies = load_copies(Path(model), options, loader)
    name = options.model_name or Path(model).stem
    if not NAME.match(name):
        raise ServeError(f"the file name {Path(model).name!r} makes no URL-safe model name: pass --model-name")
    app = build_app(ServedModel(name, copies), options)
    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    first = copies[0]
    description = (
        f"{first.format} on {first.provider}, {options.workers} worker(s), "
        f"batches of up to {options.max_batch_size} within {options.max_wait_ms:g} ms"
    )
    on_listening(Listening(f"http://{shown}:{port}", name, description))
    with _stop_signals_end_cleanly():
        try:
            make_server(app, options).run(sockets=[sock])
        finally:
            sock.close()


# uvicorn's own graceful timeout runs this much longer than ours, so that requests past ours are
# answered 503 by the app before uvicorn would cancel them with a plain-text 500 and a traceback.
UVICORN_MARGIN_S = 5.0


def make_server(app, options: ServeOptions):
    """The uvicorn server for `app`, with the documented shutdown sequence (`toolkit.serve.lifecycle`)
    and a header-read timeout."""
    uvicorn = _import_server()
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        """Closes a connection that has not sent a whole request head within `header_timeout_s`: uvicorn
        bounds idle keep-alive connections, not a client that opens one and trickles its headers."""

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_head()

        def _await_head(self) -> None:
            cycle = self.cycle  # a new request replaces it once its head has arrived
            self.loop.call_later(options.header_timeout_s, self._head_deadline, cycle)

        def _head_deadline(self, cycle) -> None:
            waiting = self.cycle is cycle and (cycle is None or cycle.response_complete)  # no request began since
            if waiting and not self.transport.is_closing():
                self.transport.close()

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            lifecycle = app.state.toolkit.lifecycle
            lifecycle.begin()  # readiness 503 while the listener still accepts
            await asyncio.sleep(options.drain_s)
            expiry = asyncio.get_running_loop().call_later(options.graceful_timeout_s, lifecycle.expire)
            try:
                await super().shutdown(sockets)
            finally:
                expiry.cancel()

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=options.graceful_timeout_s + UVICORN_MARGIN_S,
        http=HeaderTimeoutProtocol,
    )
    return DrainingServer(config)


def _log_to_stderr() -> None:
    """The app's own log (every 5xx, with its request id) on stderr, once per process."""
    logger = logging.getLogger("toolkit.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


@contextlib.contextmanager
def _stop_signals_end_cleanly():
    """SIGTERM/SIGINT end `serve` normally once uvicorn has shut down gracefully.

    uvicorn takes both signals while it runs, then re-raises the one it got to whatever
    handler was there before; that handler is this no-op, so a graceful stop returns
    (exit 0, "stopped") instead of dying by SIGTERM or raising KeyboardInterrupt.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
