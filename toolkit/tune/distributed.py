"""Keras Tuner's distributed mode: a chief oracle and workers, as its docs describe, on one machine or several.

Roles come from the environment Keras Tuner reads: KERASTUNER_TUNER_ID ("chief" or a worker's id),
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (the chief's gRPC address). `toolkit tune --workers N`
starts the chief and N workers as processes of this machine (`python -m toolkit.tune.worker
RUN/tune`, each rebuilding the search from search.json and sharing the cached features), streams their
trial lines, and ends the chief once every worker has stopped (the search finished, or the time budget
left no room for another trial). `toolkit tune --chief HOST:PORT` runs one worker in this process for a
chief started elsewhere (with `--workers N --oracle-host 0.0.0.0 --oracle-port P` there); it searches the
same space on its own copy of the data.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from toolkit.errors import TrainingError

CHIEF = "chief"
CHIEF_GRACE_S = 30  # after the last worker: time for the chief to save the oracle and exit by itself


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def role_environment(tuner_id: str, host: str, port: int) -> dict[str, str]:
    return {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": host, "KERASTUNER_ORACLE_PORT": str(port)}


def _start(tune_dir: Path, tuner_id: str, host: str, port: int) -> subprocess.Popen:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, **role_environment(tuner_id, host, port)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "toolkit.tune.worker", str(tune_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )  # fmt: skip


def run_local_cluster(tune_dir: Path, workers: int, log: Callable[[str], None], host: str = "127.0.0.1",
                      port: int | None = None) -> None:  # fmt: skip
    """The chief and `workers` workers as processes; returns when the workers have stopped and the chief is gone."""
    import threading

    port = port or free_port(host)
    log(f"chief oracle on {host}:{port}; {workers} workers on this machine")
    chief = _start(tune_dir, CHIEF, host, port)
    started = [_start(tune_dir, f"tuner{i}", host, port) for i in range(workers)]

    def relay(process: subprocess.Popen) -> None:
        for line in process.stdout:
            if line.startswith(("trial ", "no new trial", "error")):
                log(line.rstrip())

    relays = [threading.Thread(target=relay, args=(p,), daemon=True) for p in [chief, *started]]
    for thread in relays:
        thread.start()
    codes = [p.wait() for p in started]
    try:
        chief.wait(timeout=CHIEF_GRACE_S)
    except subprocess.TimeoutExpired:
        chief.terminate()  # the workers stopped before the oracle ran out of trials (a time budget)
        chief.wait()
    if any(codes):
        raise TrainingError(f"a tuning worker failed (exit codes {codes}); its lines are above")


def join_chief(chief: str) -> None:
    """Make this process one worker of the chief at HOST:PORT (`toolkit tune --chief`)."""
    host, _, port = chief.rpartition(":")
    if not host or not port.isdigit():
        raise TrainingError(f"--chief must be HOST:PORT, got {chief}")
    os.environ.update(role_environment(f"tuner-{socket.gethostname()}-{os.getpid()}", host, int(port)))
