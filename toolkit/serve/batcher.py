"""Dynamic batching: requests that arrive within `max_wait_ms` run as one batch, up to `max_batch_size` images.

As Triton's dynamic batcher does: each worker owns one loaded model and runs one
batch at a time in its own thread, so the event loop keeps accepting requests while
a batch runs; a worker that becomes free takes whatever has queued meanwhile at once
(up to the limit) and only waits, at most `max_wait_ms`, when it could take more. A
request larger than the limit runs alone, split into limit-sized model runs.
A failing batch fails only its own requests; the worker carries on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from toolkit.errors import ServerClosingError
from toolkit.runtime import Classifier


@dataclasses.dataclass
class Job:
    pixels: np.ndarray  # uint8 N x H x W x 3
    future: asyncio.Future


class DynamicBatcher:
    """Merges queued requests into batches for `classifiers` (one per worker)."""

    def __init__(self, classifiers: list[Classifier], max_batch_size: int, max_wait_ms: float, observe=None):
        self.classifiers = classifiers
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.observe = observe or (lambda batch_size, seconds: None)  # metrics hook: (images, run seconds)
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self._abandoned = False  # past the graceful timeout: no further model runs

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(c, i)) for i, c in enumerate(self.classifiers)]

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for `pixels`, computed in whichever batch the request joins."""
        if self._closed:
            raise ServerClosingError("the server is shutting down")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Job(pixels, future))
        return await future

    def abandon(self) -> None:
        """Stop between model runs: a long request split into many runs ends at the next one (ServerClosingError)."""
        self._closed = self._abandoned = True

    async def close(self) -> None:
        """Finish everything queued, then stop the workers (graceful shutdown)."""
        self._closed = True
        for _ in self._tasks:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _worker(self, classifier: Classifier, index: int) -> None:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"toolkit-serve-{index}")
        carry: Job | None = None
        try:
            while True:
                first = carry or await self._queue.get()
                if first is None:
                    return
                jobs, carry, stop = await self._gather(first)
                await self._run(classifier, executor, jobs)
                if stop:
                    return
        finally:
            executor.shutdown(wait=True)

    async def _gather(self, first: Job) -> tuple[list[Job], Job | None, bool]:
        """`first` and what joins it: (the batch, a job left for the next batch, whether a stop came)."""
        jobs, count = [first], len(first.pixels)
        deadline = time.perf_counter() + self.max_wait
        while count < self.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if job is None:
                return jobs, None, True
            if count + len(job.pixels) > self.max_batch_size:
                return jobs, job, False
            jobs.append(job)
            count += len(job.pixels)
        return jobs, None, False

    def _predict(self, classifier: Classifier, pixels: np.ndarray) -> np.ndarray:
        """Model runs of at most max_batch_size images (an oversized request is split), each one observed."""
        out = []
        for i in range(0, len(pixels), self.max_batch_size):
            if self._abandoned:
                raise ServerClosingError("the server is shutting down: the graceful timeout passed")
            chunk = pixels[i : i + self.max_batch_size]
            start = time.perf_counter()
            out.append(classifier.predict_arrays(chunk, self.max_batch_size))
            self.observe(len(chunk), time.perf_counter() - start)
        return np.concatenate(out)

    async def _run(self, classifier: Classifier, executor: ThreadPoolExecutor, jobs: list[Job]) -> None:
        live = [j for j in jobs if not j.future.done()]  # a client that went away cancelled its future
        if not live:
            return
        pixels = live[0].pixels if len(live) == 1 else np.concatenate([j.pixels for j in live])
        try:
            probs = await asyncio.get_running_loop().run_in_executor(executor, self._predict, classifier, pixels)
        except Exception as exc:  # the model failed on this batch: its requests fail, the server stays up
            for job in live:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        offset = 0
        for job in live:
            n = len(job.pixels)
            if not job.future.done():
                job.future.set_result(probs[offset : offset + n])
            offset += n
