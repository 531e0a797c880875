"""One batch prediction, either engine, into one table (`output.open_table`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from toolkit.batch.local import local_rows
from toolkit.batch.options import BatchOptions, Engine
from toolkit.batch.output import open_table
from toolkit.runtime import Classifier


@dataclasses.dataclass
class TableSummary:
    out: Path
    rows: int
    failed: int  # files that could not be classified (their rows carry the reason)


def predict_to_table(
    classifier: Classifier,
    paths: list[str],
    out: Path,
    options: BatchOptions,
    batch_size: int,
    load_options: dict,
    predictor: type | None = None,
) -> TableSummary:
    """Classify `paths` with `options.engine` and write their rows to `out`.

    `classifier` is the model already loaded (and verified) here: the local engine runs
    it, the Ray engine reads its labels and has each actor load `classifier.path` with
    `load_options`. `predictor` replaces the Ray actor class (tests kill one with it).
    """
    metadata = {"toolkit_model": classifier.path.name, "toolkit_facts": json.dumps(classifier.info.to_json())}
    if options.engine == Engine.ray:
        from toolkit.batch.ray_engine import RayPredictor, ray_rows

        rows = ray_rows(
            classifier.path, paths, classifier.labels, options, batch_size, load_options, predictor or RayPredictor
        )
    else:
        rows = local_rows(classifier, paths, batch_size)
    with open_table(out, classifier.labels, paths, metadata) as table:
        for row in rows:
            table.add(row)
    return TableSummary(out, table.written, table.failed)
