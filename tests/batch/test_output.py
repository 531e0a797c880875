"""The prediction table: one row per file, never two, none missing, and nothing half-written."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest

from toolkit.batch.output import Row, open_table
from toolkit.errors import DatasetError

LABELS = ["cat", "dog"]
ROWS = [Row("a.png", "dog", 0.75, {"cat": 0.25, "dog": 0.75}), Row("b.png", None, None, None, "empty file")]


def test_parquet_rows_keep_labels_as_struct_fields(tmp_path):
    out = tmp_path / "p.parquet"
    with open_table(out, LABELS, ["a.png", "b.png"], {"toolkit_model": "m.onnx"}) as table:
        for row in ROWS:
            table.add(row)
    read = pq.read_table(out)
    assert read.to_pylist() == [
        {"path": "a.png", "label": "dog", "score": 0.75, "probabilities": {"cat": 0.25, "dog": 0.75}, "error": None},
        {"path": "b.png", "label": None, "score": None, "probabilities": None, "error": "empty file"},
    ]
    assert read.schema.metadata[b"toolkit_model"] == b"m.onnx"
    assert (table.written, table.failed) == (2, 1)


def test_csv_rows_carry_probabilities_as_json(tmp_path):
    out = tmp_path / "p.csv"
    with open_table(out, LABELS, ["a.png", "b.png"], {}) as table:
        for row in ROWS:
            table.add(row)
    rows = list(csv.DictReader(out.open()))
    assert json.loads(rows[0]["probabilities"]) == {"cat": 0.25, "dog": 0.75} and float(rows[0]["score"]) == 0.75
    assert rows[1]["error"] == "empty file" and rows[1]["label"] == ""


def test_a_second_row_for_a_file_is_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "p.parquet"
    with pytest.raises(DatasetError, match="second row"), open_table(out, LABELS, ["a.png", "b.png"], {}) as table:
        table.add(ROWS[0])
        table.add(ROWS[0])
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_missing_file_keeps_the_previous_table(tmp_path):
    out = tmp_path / "p.csv"
    out.write_text("previous\n")
    with pytest.raises(DatasetError, match="1 file"), open_table(out, LABELS, ["a.png", "b.png"], {}) as table:
        table.add(ROWS[0])
    assert out.read_text() == "previous\n" and len(list(tmp_path.iterdir())) == 1


def test_only_parquet_and_csv(tmp_path):
    with pytest.raises(DatasetError, match=".parquet or .csv"), open_table(tmp_path / "p.json", LABELS, [], {}):
        pass
