"""The prediction table: one row per input file, written to Parquet or CSV atomically (temp file, then rename).

Columns: `path`, `label` (at the model's operating point), `score` (that label's
probability), `probabilities` (every class: a struct column in Parquet, a JSON object
in CSV) and `error` (why a file could not be classified; its other columns empty).
Parquet needs pyarrow (the `[ray]` extra brings it). The writer refuses a second row
for a path it already wrote, and `close` checks that every expected file has its row,
so a retried task can neither duplicate nor drop a file.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path

from toolkit.errors import DatasetError, MissingDependencyError
from toolkit.fileio import atomic_path

ROW_GROUP = 4096  # rows per Parquet row group: a bounded buffer, whatever the folder's size
COLUMNS = ("path", "label", "score", "probabilities", "error")


class TableFormat(StrEnum):
    parquet = ".parquet"
    csv = ".csv"


@dataclasses.dataclass
class Row:
    path: str
    label: str | None
    score: float | None
    probabilities: dict[str, float] | None
    error: str | None = None


def table_format(out: Path) -> TableFormat:
    suffix = out.suffix.lower()
    if suffix not in tuple(TableFormat):
        raise DatasetError(f"--out {out.name}: the table is written as .parquet or .csv")
    return TableFormat(suffix)


class _CsvTable:
    def __init__(self, path: Path, labels: list[str], metadata: dict[str, str]):
        self.file = path.open("w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow(COLUMNS)

    def write(self, rows: list[Row]) -> None:
        for r in rows:
            probs = json.dumps(r.probabilities) if r.probabilities is not None else ""
            score = repr(r.score) if r.score is not None else ""
            self.writer.writerow([r.path, r.label or "", score, probs, r.error or ""])

    def close(self) -> None:
        self.file.close()


class _ParquetTable:
    def __init__(self, path: Path, labels: list[str], metadata: dict[str, str]):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise MissingDependencyError(
                "a .parquet table needs pyarrow: pip install 'toolkit[ray]' (or use .csv)"
            ) from None
        self.pa = pa
        probabilities = pa.struct([(label, pa.float64()) for label in labels])
        fields = [("path", pa.string()), ("label", pa.string()), ("score", pa.float64())]
        self.schema = pa.schema([*fields, ("probabilities", probabilities), ("error", pa.string())], metadata=metadata)
        self.writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, rows: list[Row]) -> None:
        columns = {name: [getattr(r, name) for r in rows] for name in COLUMNS}
        self.writer.write_table(self.pa.Table.from_pydict(columns, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


class TableWriter:
    """Rows in, one table out; `expected` paths must each get exactly one row."""

    def __init__(self, table, expected: Iterable[str]):
        self.table = table
        self.missing = set(expected)
        self.written = 0
        self.failed = 0
        self._buffer: list[Row] = []

    def add(self, row: Row) -> None:
        if row.path not in self.missing:
            raise DatasetError(f"{row.path}: a second row for this file, or a file that was not asked for")
        self.missing.discard(row.path)
        self.written += 1
        self.failed += row.error is not None
        self._buffer.append(row)
        if len(self._buffer) >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self.table.write(self._buffer)
            self._buffer = []


@contextlib.contextmanager
def open_table(out: Path, labels: list[str], expected: list[str], metadata: dict[str, str]) -> Iterator[TableWriter]:
    """A TableWriter whose file appears at `out` only when every expected row was written."""
    kind = table_format(out)
    with atomic_path(out) as tmp:
        table = (_ParquetTable if kind is TableFormat.parquet else _CsvTable)(tmp, labels, metadata)
        writer = TableWriter(table, expected)
        try:
            yield writer
            writer.flush()
        finally:
            table.close()
        if writer.missing:
            example = sorted(writer.missing)[0]
            raise DatasetError(f"{len(writer.missing)} file(s) got no row (e.g. {example}); {out} was not written")
