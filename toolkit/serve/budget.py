"""The server's decode budget: how many bytes its requests may hold at once while they are read and decoded.

Without it the memory a server needs grows with its traffic: each request body, its
gzip inflation, its JSON parse (up to ~34 bytes of Python objects per byte of JSON,
measured) and its decoded image live at once, for every concurrent request. Each
request reserves what it will need *before* it reads or decodes (from the declared
body length, the JSON's length, or the image header: `toolkit.imaging.decode_cost`);
one that can never fit is refused with 413, one that does not fit now waits a moment
and is then answered 503 with `Retry-After`, and nothing is decoded beyond the budget.
"""

from __future__ import annotations

import asyncio
import contextlib

from toolkit.errors import ProtocolError

MB = 1024 * 1024
# Bytes of memory a JSON body's parse may take per byte of JSON, at worst: one-element lists
# ("[[0],[0],...]") measured 34; tests/serve/test_offload.py keeps it an upper bound.
JSON_BYTES_FACTOR = 40


class DecodeBudget:
    """A byte budget shared by all requests; `hold(n)` reserves n bytes for the duration of a block."""

    def __init__(self, total_bytes: int, wait_s: float = 2.0):
        self.total = total_bytes
        self.wait_s = wait_s  # how long a request waits for room before it is answered 503
        self.used = 0
        self.peak = 0  # the most ever reserved at once (tests, the load benchmark)
        self._room = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int, what: str):
        nbytes = max(0, int(nbytes))
        if nbytes > self.total:
            raise ProtocolError(
                f"{what} would need about {nbytes / MB:.0f} MB to decode, more than this server's decode budget "
                f"of {self.total / MB:.0f} MB (--max-decode-mb)",
                413,
            )
        async with self._room:
            try:
                await asyncio.wait_for(self._room.wait_for(lambda: self.used + nbytes <= self.total), self.wait_s)
            except TimeoutError:
                raise ProtocolError(
                    f"the server is busy decoding other requests ({self.used / MB:.0f} of {self.total / MB:.0f} MB "
                    "of its decode budget in use): retry shortly",
                    503,
                    retry_after_s=1,
                ) from None
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            async with self._room:
                self.used -= nbytes
                self._room.notify_all()
