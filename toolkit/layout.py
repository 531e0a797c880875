"""The run folder's file names and the readers the TF-free runtime shares with training and export.

Its own module, below the runtime, so that `toolkit.runtime` can find a run's labels
and export manifest without importing the data loaders that `toolkit.run_folder` needs.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.errors import ModelError

# Every name of the run folder, defined here once (training writes them, export, bench and the runtime read them).
BEST = "best.keras"
CONFIG = "config.json"
LABELS = "labels.json"
STATE = "train_state.json"
HISTORY = "history.csv"
CURVES = "curves.png"
RUN = "run.json"
METRICS = "metrics.json"
DATA_REPORT = "data_report.json"
CACHE_DIR = "cache"
EXPORT_DIR = "export"  # RUN/export/: the artifacts and their manifest
MANIFEST = "manifest.json"
BENCH_DIR = "bench"  # RUN/bench/: bench.json, bench.md and the plots
BENCH_JSON = "bench.json"


def read_json_file(path: Path, what: str):
    """A JSON file of the run folder, or a one-line ModelError naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {what} {path}: {' '.join(str(exc).split())[:120]}") from None


def manifest_artifacts(path: Path) -> list[dict]:
    """The `artifacts` of an export manifest, each with format, precision and path; damage is one line."""
    data = read_json_file(path, "export manifest")
    artifacts = data.get("artifacts") if isinstance(data, dict) else None
    if not isinstance(artifacts, list):
        raise ModelError(f"{path}: 'artifacts' must be a list")
    for entry in artifacts:
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("format", "precision", "path")
        ):
            raise ModelError(f"{path}: each entry of 'artifacts' needs 'format', 'precision' and 'path' strings")
    return artifacts


def artifact_name(entry: dict) -> str:
    """How tables and bench rows name a manifest entry: "onnx int8", or "onnx int8 heatmap" for a variant."""
    return " ".join(filter(None, (entry["format"], entry["precision"], entry.get("variant"))))
