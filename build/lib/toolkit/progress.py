"""Progress of the long phases (decoding, feature extraction, conversions, parity runs, bench backends).

Library code reports through `track()` and `phase()` and never decides how it is
shown: the command line picks a reporter once (`use()`): a rich progress bar with
counts and ETA on a terminal, one line per phase otherwise (logs, CI), nothing
under --quiet or --json. Embedded in an app, the default reporter shows nothing.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Reporter:
    """Shows nothing: the default for library use."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        yield lambda _n=1: None


class LineReporter(Reporter):
    """One line per finished phase: what it was, how many items, how long it took."""

    def __init__(self, stream=None) -> None:
        self.stream = stream

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        done = [0]
        start = time.perf_counter()

        def advance(n: int = 1) -> None:
            done[0] += n

        yield advance
        count = f"{done[0]}/{total} " if total else ""
        stream = self.stream or sys.stderr
        print(f"{description}: {count}done in {time.perf_counter() - start:.1f} s", file=stream, flush=True)


class BarReporter(Reporter):
    """A rich progress bar with counts and ETA, removed when the phase ends, then one summary line."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        start = time.perf_counter()
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
        console.print(f"{description}: done in {time.perf_counter() - start:.1f} s", highlight=False)


_current: list[Reporter] = [Reporter()]  # process-wide: phases run in the main thread, reporters read it there


def use(reporter: Reporter) -> None:
    """Choose how progress is shown from now on (the command line does this once)."""
    _current[0] = reporter


def for_terminal(quiet: bool) -> Reporter:
    """Nothing when quiet, a bar on a terminal, lines otherwise."""
    if quiet:
        return Reporter()
    return BarReporter() if sys.stderr.isatty() else LineReporter()


def phase(description: str, total: int | None = None):
    """`with phase("exporting onnx int8"):` or, with a total, `with phase("x", n) as advance: advance(k)`."""
    return _current[0].task(description, total)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield `items`, advancing one step per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with phase(description, total) as advance:
        for item in items:
            yield item
            advance(1)
