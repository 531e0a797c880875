"""Dynamic batching on a stand-in model that records every batch it runs."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from toolkit.errors import ServerClosingError
from toolkit.serve.batcher import DynamicBatcher


class Recorder:
    """predict_arrays that records batch sizes, takes `delay` seconds, and fails on a pixel value of 99."""

    def __init__(self, delay: float = 0.02):
        self.delay = delay
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def predict_arrays(self, pixels: np.ndarray, batch_size: int) -> np.ndarray:
        time.sleep(self.delay)
        if (pixels == 99).any():
            raise RuntimeError("the model failed")
        with self.lock:
            self.batches.append(len(pixels))
        first = pixels.reshape(len(pixels), -1)[:, 0].astype(np.float32)
        return np.stack([first, -first], axis=1)


def _image(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 2, 2, 3), value, np.uint8)


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    model = Recorder()

    async def scenario():
        batcher = DynamicBatcher([model], max_batch_size=8, max_wait_ms=50)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(_image(v)) for v in range(20)))
        await batcher.close()
        return results

    results = _run(scenario())
    assert [float(r[0, 0]) for r in results] == [float(v) for v in range(20)]  # each request its own answer
    assert sum(model.batches) == 20 and max(model.batches) == 8 and len(model.batches) <= 4


def test_batch_size_one_runs_every_request_alone():
    model = Recorder(delay=0.0)

    async def scenario():
        batcher = DynamicBatcher([model], max_batch_size=1, max_wait_ms=50)
        batcher.start()
        await asyncio.gather(*(batcher.submit(_image(v)) for v in range(6)))
        await batcher.close()

    _run(scenario())
    assert model.batches == [1] * 6


def test_a_request_larger_than_the_limit_runs_alone_in_limit_sized_runs():
    model = Recorder(delay=0.0)

    async def scenario():
        batcher = DynamicBatcher([model], max_batch_size=4, max_wait_ms=20)
        batcher.start()
        big, small = await asyncio.gather(batcher.submit(_image(7, 10)), batcher.submit(_image(3)))
        await batcher.close()
        return big, small

    big, small = _run(scenario())
    assert big.shape == (10, 2) and (big[:, 0] == 7).all() and small.shape == (1, 2)
    assert sorted(model.batches) == [1, 2, 4, 4]  # model runs never exceed the limit


def test_a_failing_batch_fails_only_its_requests_and_the_worker_goes_on():
    model = Recorder(delay=0.0)

    async def scenario():
        batcher = DynamicBatcher([model], max_batch_size=1, max_wait_ms=0)
        batcher.start()
        results = await asyncio.gather(
            batcher.submit(_image(1)), batcher.submit(_image(99)), batcher.submit(_image(2)), return_exceptions=True
        )
        await batcher.close()
        return results

    ok, failed, after = _run(scenario())
    assert isinstance(failed, RuntimeError) and float(ok[0, 0]) == 1.0 and float(after[0, 0]) == 2.0


def test_close_finishes_queued_work_then_refuses_more():
    model = Recorder(delay=0.01)

    async def scenario():
        batcher = DynamicBatcher([model, Recorder(delay=0.01)], max_batch_size=2, max_wait_ms=1)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(_image(v))) for v in range(7)]
        await asyncio.sleep(0)
        await batcher.close()
        done = await asyncio.gather(*pending)
        with pytest.raises(ServerClosingError):
            await batcher.submit(_image(1))
        return done

    assert len(_run(scenario())) == 7
