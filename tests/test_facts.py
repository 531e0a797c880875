"""The model-facts record: one record in every artifact, read back from the file alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_runtime import ARTIFACTS as RUNTIME_ARTIFACTS
from toolkit.errors import RuntimeModelError
from toolkit.facts import InputSpec, ModelFacts

ARTIFACTS = [*RUNTIME_ARTIFACTS, "model_bf16.xml", "model_int8.xml"]  # every model file the exported_run fixture holds


def _copy_alone(export: Path, name: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(export / name, dest / name)
    if name.endswith(".xml"):
        shutil.copy(export / name.replace(".xml", ".bin"), dest / name.replace(".xml", ".bin"))
    return dest / name


def test_every_artifact_carries_the_same_record_as_its_manifest(exported_run):
    from toolkit.runtime import load

    export = exported_run / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    labels = json.loads((exported_run / "labels.json").read_text())
    records, digests = {}, set()
    for name in ARTIFACTS:
        clf = load(export / name)
        records[name] = clf.info.shared()
        digests.add(clf.info.content_sha256)
        entry = next(a for a in manifest["artifacts"] if a["path"] == name)
        assert entry["facts"] == clf.info.to_json(), name
        assert clf.label_source == "model-facts" and clf.verified, name
    first = records[ARTIFACTS[0]]
    assert all(record == first for record in records.values())  # one record, each file with its own digest
    assert len(digests) == len(ARTIFACTS) and None not in digests
    assert first["labels"] == labels["labels"]
    assert first["decision"]["threshold"] == labels["threshold"]
    assert first["decision"]["positive_class"] == labels["positive_class"]
    assert first["input"] == {"height": 32, "width": 32, "channels": 3, "pixel_range": "0..255", "layout": "NHWC"}
    assert first["base"] == "tiny" and first["source_sha256"] == manifest["source"]["sha256"]
    assert first["score_calibration"] == labels["score_calibration"]  # the temperature, in every artifact
    assert first["score_calibration"]["method"] == "temperature" and clf.info.calibrated
    for entry in manifest["artifacts"]:  # each artifact's calibration beside Keras's
        assert {"ece", "reference_ece", "brier", "reference_brier", "ece_increase_ci95"} <= set(entry["parity"])
        assert entry["timings_s"]["convert"] > 0 and entry["timings_s"]["parity"] >= 0  # each phase's time
    phases = manifest["export_timings_s"]  # the last export's shared phases and each artifact's whole time
    assert {"load", "keras_reference", "diagnosis", "total"} <= set(phases) and phases["keras_reference"] > 0
    per_artifact = [v for k, v in phases.items() if k not in ("load", "keras_reference", "diagnosis", "total")]
    assert per_artifact and sum(per_artifact) + phases["load"] + phases["keras_reference"] <= phases["total"]
    assert manifest["facts"] == first


@pytest.mark.parametrize("name", ARTIFACTS)
def test_each_file_copied_alone_predicts_named_labels_at_the_operating_point(exported_run, tmp_path, name):
    from tests.conftest import validation_files
    from toolkit.runtime import load

    lone = _copy_alone(exported_run / "export", name, tmp_path / "app")
    assert not (lone.parent / "manifest.json").exists()
    clf = load(lone)
    labels = json.loads((exported_run / "labels.json").read_text())
    assert clf.labels == labels["labels"] and clf.label_source == "model-facts"
    assert clf.decision is not None and clf.decision.threshold == pytest.approx(labels["threshold"])
    predictions = clf.predict(validation_files(exported_run)[:6])
    positive = labels["labels"].index(labels["positive_class"])
    for p in predictions:
        assert p.label in labels["labels"]
        expected = positive if p.probabilities[labels["positive_class"]] >= labels["threshold"] else 1 - positive
        assert p.index == expected


def test_a_manifest_that_disagrees_with_the_file_is_refused(exported_run, tmp_path):
    from toolkit.runtime import load

    export = tmp_path / "export"
    shutil.copytree(exported_run / "export", export)
    manifest = json.loads((export / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        entry["facts"]["labels"] = list(reversed(entry["facts"]["labels"]))
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeModelError, match="disagrees"):
        load(export / "model_float32.onnx")
    with pytest.raises(RuntimeModelError, match="disagrees"):
        load(export / "model_int8.tflite")


def test_web_bundle_config_carries_the_record():
    from toolkit.export.base import ExportContext
    from toolkit.export.web import bundle_config

    facts = ModelFacts(("a", "b"), InputSpec.square(32), None, "raw", "0.3")
    ctx = ExportContext(None, Path("."), ["a", "b"], 32, np.zeros((1, 32, 32, 3), np.uint8), 17, "sha", facts)
    assert bundle_config(ctx, "float32")["toolkit_facts"] == facts.to_json()


def test_record_round_trips_and_damage_is_one_line():
    facts = ModelFacts(
        labels=("benign", "malignant"),
        input=InputSpec(48, 64),
        decision={"positive_class": "malignant", "threshold": 0.3, "criterion": "sensitivity=0.95"},
        preprocessing="raw",
        toolkit_version="0.3.0",
        score_calibration={"method": "temperature", "temperature": 1.7, "fitted_on": "validation"},
        extra={"future": 1},
    )
    again = ModelFacts.loads(facts.dumps(), "x")
    assert again == facts and again.image_size == (48, 64) and again.calibrated and again.extra == {"future": 1}
    older = {k: v for k, v in facts.to_json().items() if k != "score_calibration"}  # exported before #42
    assert (
        ModelFacts.from_json(older, "x").score_calibration is None and not ModelFacts.from_json(older, "x").calibrated
    )
    newer = dict(facts.to_json(), future_key=1)  # a newer writer's extra keys do not stop an older reader
    assert ModelFacts.from_json(newer, "x") == facts
    broken_temperature = dict(facts.to_json(), score_calibration={"method": "temperature", "temperature": -1})
    with pytest.raises(RuntimeModelError, match="score_calibration"):
        ModelFacts.from_json(broken_temperature, "x")
    for bad in ("[1, 2]", '{"labels": "ab"}', '{"labels": ["a"], "input": {"height": 0, "width": 1}}', "{not json"):
        with pytest.raises(RuntimeModelError, match="model.py|model-facts record"):
            ModelFacts.loads(bad, "model.py")
