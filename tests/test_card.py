"""The model card's figures are the run folder's own (metrics.json, manifest, bench.json), its front matter is
Hugging Face's model-index, and the owner's sections survive every rewrite."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from toolkit.bench import run_bench
from toolkit.bench.types import BenchOptions
from toolkit.card import CARD_JSON, CARD_MD, write_model_card

pytestmark = pytest.mark.slow  # a bench run on the exported fixture


@pytest.fixture
def benched(exported_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("cache"))
    run_bench(run, [], BenchOptions(formats=["onnx"], precisions=["float32", "int8"], batches=(1,), runs=2, threads=1))
    return run


def _json(path):
    return json.loads(path.read_text())


def test_the_card_states_the_run_folders_own_figures(benched):
    card = _json(benched / CARD_JSON)  # rewritten by bench, after train and export wrote it
    metrics, labels = _json(benched / "metrics.json"), _json(benched / "labels.json")
    manifest, bench = _json(benched / "export" / "manifest.json"), _json(benched / "bench" / "bench.json")
    test = card["metrics"]["test"]
    assert test["accuracy"] == metrics["test"]["accuracy"] and test["images"] == metrics["test"]["count"]
    assert test["accuracy_ci95"][0] <= test["accuracy"] <= test["accuracy_ci95"][1]
    assert card["metrics"]["validation"]["accuracy"] == metrics["accuracy"]
    assert card["metrics"]["test"]["ece"] == metrics["calibration"]["test"]["after"]["ece"]
    assert card["calibration"] == labels["score_calibration"]
    assert card["operating_point"]["threshold"] == labels["threshold"]
    by_path = {a["path"]: a for a in manifest["artifacts"]}
    assert len(card["artifacts"]) == len(by_path)
    for row in card["artifacts"]:
        entry = by_path[row["path"]]
        assert row["gate_passed"] == entry["parity"]["passed"] and row["size_mb"] == entry["size_bytes"] / 1e6
        assert row["ece"] == entry["parity"]["ece"]
    timed = {r["name"]: r["p50_ms"] for r in bench["records"] if r["batch"] == 1}
    onnx = next(r for r in card["artifacts"] if (r["format"], r["precision"]) == ("onnx", "int8"))
    assert onnx["batch1_p50_ms"] == timed["onnx int8"]
    text = (benched / CARD_MD).read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    reported = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert reported["accuracy"] == round(metrics["test"]["accuracy"], 4)
    assert front["pipeline_tag"] == "image-classification"


def test_the_owners_sections_survive_a_rewrite(benched):
    path = benched / CARD_MD
    text = path.read_text()
    mine = "Triage support for dermatologists; never a diagnosis on its own."
    path.write_text(text.replace("<!-- user:intended_use -->\n_To be filled in by the model's owner._",
                                 f"<!-- user:intended_use -->\n{mine}"))  # fmt: skip
    write_model_card(benched)
    assert mine in path.read_text() and _json(benched / CARD_JSON)["user"]["intended_use"] == mine
