"""The server's decode budget: how many bytes its requests may hold at once while they are decoded.

Without it the memory a server needs grows with its traffic: each request's gzip inflation,
its JSON parse (up to ~34 bytes of Python objects per byte of JSON, measured) and its decoded
image would all live at once, for every concurrent request. Each decoding step reserves
what it will need *before* it runs (the body limit for inflation, JSON_BYTES_FACTOR times the
JSON's length, or the image header's `toolkit.imaging.decode_cost`) and frees it when done;
a step that can never fit is refused with 413, one that does not fit now waits in line
(first come, first served, so a large request is not overtaken forever by small ones) for up
to `wait_s` (60 s, about common client timeouts), then gets 503 with `Retry-After`.
A request never holds one reservation while it waits for another, so requests cannot
deadlock one another. Bodies in transit are bounded apart: --max-body-mb per connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from toolkit.errors import ProtocolError

MB = 1024 * 1024
# Bytes of memory a JSON body's parse may take per byte of JSON, at worst: one-element lists
# ("[[0],[0],...]") measured 34; tests/serve/test_offload.py keeps it an upper bound.
JSON_BYTES_FACTOR = 40


class DecodeBudget:
    """A byte budget shared by all requests, granted in arrival order; `hold(n)` reserves n bytes for a block."""

    def __init__(self, total_bytes: int, wait_s: float = 60.0):
        self.total = total_bytes
        self.wait_s = wait_s  # how long a step waits in line before it is answered 503
        self.used = 0
        self.peak = 0  # the most ever reserved at once (tests, the load benchmark)
        self._line: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int, what: str):
        nbytes = max(0, int(nbytes))
        if nbytes > self.total:
            raise ProtocolError(
                f"{what} would need about {nbytes / MB:.0f} MB to decode, more than this server's decode budget "
                f"of {self.total / MB:.0f} MB (--max-decode-mb)",
                413,
            )
        if not self._line and self.used + nbytes <= self.total:
            self._take(nbytes)
        else:
            await self._wait_in_line(nbytes)
        try:
            yield
        finally:
            self._release(nbytes)

    async def _wait_in_line(self, nbytes: int) -> None:
        granted = asyncio.get_running_loop().create_future()
        entry = (nbytes, granted)
        self._line.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(granted), self.wait_s)
        except BaseException as exc:  # timed out or cancelled: leave the line, or give back what came too late
            if granted.done() and not granted.cancelled():
                self._release(nbytes)
            else:
                granted.cancel()
                with contextlib.suppress(ValueError):
                    self._line.remove(entry)
                self._grant()  # those behind may fit now
            if isinstance(exc, TimeoutError):
                raise ProtocolError(
                    f"the server is busy decoding other requests ({self.used / MB:.0f} of {self.total / MB:.0f} MB "
                    "of its decode budget in use): retry shortly",
                    503,
                    retry_after_s=1,
                ) from None
            raise

    def _take(self, nbytes: int) -> None:
        self.used += nbytes
        self.peak = max(self.peak, self.used)

    def _release(self, nbytes: int) -> None:
        self.used -= nbytes
        self._grant()

    def _grant(self) -> None:
        while self._line and self.used + self._line[0][0] <= self.total:
            nbytes, granted = self._line.popleft()
            if not granted.done():
                self._take(nbytes)
                granted.set_result(None)
