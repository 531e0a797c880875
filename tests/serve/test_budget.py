"""The decode budget: never more than its total at once, first come first served, 413 for what can never
fit, 503 with Retry-After after waiting too long, and a waiter that gives up leaves the line."""

from __future__ import annotations

import asyncio

import pytest

from toolkit.errors import ProtocolError
from toolkit.serve.budget import DecodeBudget


def _run(coro):
    return asyncio.run(coro)


async def _user(budget: DecodeBudget, nbytes: int, seconds: float, log: list, tag: str) -> None:
    async with budget.hold(nbytes, tag):
        log.append((tag, "in", budget.used))
        await asyncio.sleep(seconds)


def test_a_large_request_is_not_overtaken_by_small_ones_arriving_after_it():
    budget, log = DecodeBudget(100), []

    async def main():
        first = asyncio.create_task(_user(budget, 60, 0.2, log, "first"))
        await asyncio.sleep(0.01)
        large = asyncio.create_task(_user(budget, 80, 0.05, log, "large"))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(_user(budget, 30, 0.05, log, "small"))  # would fit now, but waits its turn
        await asyncio.gather(first, large, small)

    _run(main())
    assert [tag for tag, _, _ in log] == ["first", "large", "small"]
    assert all(used <= 100 for _, _, used in log) and budget.peak <= 100 and budget.used == 0


def test_what_can_never_fit_is_413_and_a_long_wait_is_503_with_retry_after():
    budget = DecodeBudget(100, wait_s=0.1)

    async def main():
        with pytest.raises(ProtocolError) as never:
            async with budget.hold(101, "the image"):
                pass
        assert never.value.status == 413 and "--max-decode-mb" in str(never.value)
        holder = asyncio.create_task(_user(budget, 90, 0.5, [], "holder"))
        await asyncio.sleep(0.01)
        with pytest.raises(ProtocolError) as busy:
            async with budget.hold(20, "the JSON"):
                pass
        assert busy.value.status == 503 and busy.value.retry_after_s == 1
        async with budget.hold(10, "fits beside the holder"):  # the line is empty again
            assert budget.used == 100
        await holder

    _run(main())
    assert budget.used == 0


def test_a_cancelled_waiter_leaves_the_line_and_the_next_one_gets_in():
    budget, log = DecodeBudget(100), []

    async def main():
        holder = asyncio.create_task(_user(budget, 70, 0.2, log, "holder"))
        await asyncio.sleep(0.01)
        gives_up = asyncio.create_task(_user(budget, 90, 0.0, log, "gives_up"))
        await asyncio.sleep(0.01)
        patient = asyncio.create_task(_user(budget, 20, 0.0, log, "patient"))
        await asyncio.sleep(0.01)
        gives_up.cancel()  # a client that hung up while its request waited
        await asyncio.gather(holder, patient)

    _run(main())
    assert [tag for tag, _, _ in log] == ["holder", "patient"] and budget.used == 0
