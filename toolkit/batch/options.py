"""What a batch prediction is asked to do: the only home of its defaults (the CLI reads them from here)."""

from __future__ import annotations

import dataclasses
from enum import StrEnum


class Engine(StrEnum):
    """Where `toolkit predict` runs the model: in this process, or in a Ray actor pool (one model per actor)."""

    local = "local"
    ray = "ray"


@dataclasses.dataclass
class BatchOptions:
    engine: Engine = Engine.local
    address: str | None = None  # ray: the cluster to join ("auto", "ray://host:10001"); default: a local one
    workers: int = 2  # ray: actors, each holding one loaded model and one CPU
