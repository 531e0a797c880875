"""The local engine: the runtime's own streaming `predict_files`, as rows of the prediction table."""

from __future__ import annotations

from collections.abc import Iterator

from toolkit.batch.output import Row
from toolkit.runtime import Classifier


def local_rows(classifier: Classifier, paths: list[str], batch_size: int) -> Iterator[Row]:
    for path, prediction, error in classifier.predict_files(paths, batch_size):
        if error is not None:
            yield Row(str(path), None, None, None, str(error))
        else:
            yield Row(str(path), prediction.label, prediction.score, prediction.probabilities)
