"""The toolkit CLI as the benchmarks run it: the command a user types, in this interpreter.

One helper for every benchmark (bases, defaults, int8, real, tune): the command is echoed to stderr,
its stdout captured (a `--json` answer), its stderr passed through (progress, the one-line error)
unless `capture_stderr` keeps it for the caller's row; with `check`, a failure ends the benchmark in one line.
"""

from __future__ import annotations

import subprocess
import sys


def toolkit(*args: str, check: bool = True, capture_stderr: bool = False) -> subprocess.CompletedProcess:
    print("$ toolkit " + " ".join(args), file=sys.stderr, flush=True)
    stderr = subprocess.PIPE if capture_stderr else None
    result = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *args], stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    if check and result.returncode != 0:
        raise SystemExit(f"toolkit {args[0]} failed with exit code {result.returncode}")
    return result
