"""Peak resident memory of a process (Linux): what the memory tests measure a decode or a parse by.

`reset_peak()` sets the kernel's high-water mark (VmHWM) back to the current size, so the growth of a
later `peak()` is what the code in between needed. `PRELUDE` is the same functions' source, for the
fresh `python -c` processes that measure a call alone.
"""

from __future__ import annotations

import inspect


def _status(key: str) -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))


def reset_peak() -> int:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _status("VmRSS:")


def peak() -> int:
    return _status("VmHWM:")


PRELUDE = "\n".join(inspect.getsource(f) for f in (_status, reset_peak, peak))
