"""Work proportional to a request's size runs off the event loop, so health, metrics and every other
request keep being answered while it runs.

- Inflating gzip/deflate and decoding images run in a thread pool: zlib and Pillow
  release the GIL while they work.
- Parsing a JSON body larger than INLINE_JSON_BYTES runs in a process pool: Python's
  JSON parser and numpy's list conversion hold the GIL for the whole parse (a 16 MB
  body: ~0.6 s during which no other thread runs), so a thread would still stall the
  loop. Smaller bodies (every binary request's header, JSON of a few small images)
  are parsed in place: a millisecond or less.

The processes are started with "spawn" (the server's own threads make fork unsafe)
and warmed when the server starts, so the first large body does not pay for it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from toolkit.errors import ProtocolError
from toolkit.serve.protocol import InferRequest, ModelSignature, ascii_int, parse_infer_request

INLINE_JSON_BYTES = 64 * 1024


MMAP_THRESHOLD = 1 << 20  # allocations from 1 MiB up are mapped, and unmapped as soon as they are freed
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_freed_memory() -> bool:
    """Make glibc give large freed blocks back to the OS at once (False where it is not glibc).

    By default glibc raises its mmap threshold after the first large free, up to 32 MB; a
    decoded image (Pillow allocates it in 16 MB blocks) then lands in the decoding thread's
    own heap and stays resident after it is freed, once per thread: three 64-megapixel
    decodes on three threads kept 3 GB. A fixed threshold also turns the dynamic one off.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError, TypeError):
        return False


def _warm() -> int:
    return os.getpid()


class Offload:
    """The server's decode threads and JSON parser processes."""

    def __init__(self, threads: int, processes: int):
        self.threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="toolkit-decode")
        self.process_count = processes
        self.processes = self._new_pool()
        self._warming: asyncio.Future | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.process_count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=return_freed_memory,  # a parse's lists are freed at once, not kept by the process
        )

    def start(self) -> None:
        """Start the parser processes in the background (the server answers meanwhile)."""
        return_freed_memory()
        loop = asyncio.get_running_loop()
        self._warming = asyncio.gather(
            *(loop.run_in_executor(self.processes, _warm) for _ in range(self.process_count)), return_exceptions=True
        )

    async def in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.threads, fn, *args)

    async def parse_infer(self, body: bytes, header_length: str | None, signature: ModelSignature) -> InferRequest:
        """`parse_infer_request`, in place for small JSON and in a parser process for large."""
        if json_bytes(body, header_length) <= INLINE_JSON_BYTES:
            return parse_infer_request(body, header_length, signature)
        pool = self.processes
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, parse_infer_request, body, header_length, signature
            )
        except BrokenProcessPool:  # a parser process died (killed from outside): replace the pool, go on
            if self.processes is pool:
                self.processes = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            raise ProtocolError("the server's JSON parser restarted: retry", 503, retry_after_s=1) from None

    def close(self) -> None:
        self.processes.shutdown(wait=False, cancel_futures=True)
        self.threads.shutdown(wait=False, cancel_futures=True)


def json_bytes(body: bytes, header_length: str | None) -> int:
    """How much of the body is JSON: the header the binary extension declares, or all of it."""
    declared = ascii_int(header_length)
    return len(body) if declared is None else min(declared, len(body))
