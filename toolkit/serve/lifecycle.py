"""The server's shutdown sequence, as docs/serve.md states it and load balancers expect.

1. A stop signal makes readiness answer 503 while the listener stays open for the drain
   window, so a load balancer stops sending before any client sees "connection refused";
   requests that still arrive are served.
2. The listener closes; in-flight requests may finish within the graceful timeout.
3. Requests still running when it expires are answered with a JSON 503 (never uvicorn's
   plain-text 500 and a traceback per request); the batch workers stop between model runs.
4. The batch queue is drained and the process exits 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Lifecycle:
    """Whether the server is stopping or past its graceful timeout, and the requests it would cut short."""

    def __init__(self) -> None:
        self.stopping = False  # readiness answers 503 from here on
        self.expired = False  # the graceful timeout passed: running requests are answered 503
        self._requests: set[asyncio.Task] = set()
        self._on_expire: list[Callable[[], None]] = []

    def on_expire(self, callback: Callable[[], None]) -> None:
        self._on_expire.append(callback)

    def track(self, task: asyncio.Task) -> None:
        self._requests.add(task)

    def untrack(self, task: asyncio.Task) -> None:
        self._requests.discard(task)

    def begin(self) -> None:
        """A stop was asked for: readiness turns 503 now; the listener closes after the drain window."""
        self.stopping = True

    def expire(self) -> None:
        """The graceful timeout passed: stop the workers between model runs and cut the running requests short."""
        self.expired = True
        for callback in self._on_expire:
            callback()
        for task in list(self._requests):
            task.cancel("graceful timeout")
