"""Silence native libraries that print to the terminal (TensorFlow, LiteRT).

Their C++ logging writes straight to file descriptors 1 and 2, past Python's
`sys.stdout`, so the descriptors themselves are redirected for the duration.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def silenced(fds: tuple[int, ...] = (2,)):
    """Point the given OS-level file descriptors at /dev/null (C++ and Python output alike)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[tuple[int, int]] = []
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
            except OSError:  # no real descriptor (e.g. under some test runners)
                continue
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)
