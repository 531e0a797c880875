"""`--int8-max-drop`: an int8 artifact that fails its gate is brought through it, calibrations first, then float layers."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.export import ExportOptions, export_run
from toolkit.parity import ParityOverrides

STRICT = ParityOverrides(min_agreement=1.0, max_accuracy_drop=0.0)  # every validation decision must agree


def _razor_thin_operating_point(run) -> float:
    """Put the run's threshold between its two closest validation scores: int8's noise flips a decision there.

    The tiny random model's probabilities all sit near 0.5, so any operating point in their midst
    is as fragile as a real model's near-ties; float layers remove the noise, and the decision holds.
    """
    import numpy as np

    from toolkit.model import load_keras_model, predict_in_batches
    from toolkit.run_folder import load_run

    loaded = load_run(run)
    val = loaded.load_data().val
    scores = np.sort(predict_in_batches(load_keras_model(loaded.best), np.asarray(val.images))[:, 1])
    gaps = np.diff(scores)
    i = int(np.argmin(gaps))
    threshold = float(scores[i] + gaps[i] / 2)
    payload = json.loads((run / "labels.json").read_text())
    payload.update(positive_class=payload["labels"][1], threshold=threshold, criterion=f"threshold={threshold}")
    (run / "labels.json").write_text(json.dumps(payload))
    return float(gaps[i])


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_the_fix_turns_a_failing_int8_gate_into_a_pass_and_says_what_it_cost(trained_run, tmp_path, fmt):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _razor_thin_operating_point(run)
    base = dict(format=fmt, precisions=["int8"], calib_images=1, overrides=STRICT)
    plain = export_run(run, ExportOptions(**base))
    assert plain.failed, "the strict gate must fail without the fix"
    fixed = CliRunner().invoke(
        app,
        ["export", str(run), "--format", fmt, "--precision", "int8", "--calib-images", "1", "--min-agreement", "1"]
        + ["--int8-max-drop", "0", "--int8-max-float-layers", "40"],
    )
    assert fixed.exit_code == 0, fixed.output
    (entry,) = json.loads((run / "export" / "manifest.json").read_text())["artifacts"]
    assert f"{fmt} int8: passed after {len(entry['int8_fix']['attempts'])} attempts" in fixed.output
    fix = entry["int8_fix"]
    assert entry["parity"]["passed"] and entry["parity"]["thresholds"]["max_accuracy_drop"] == 0.0
    methods = [a["calibration"]["method"] for a in fix["attempts"]]
    assert methods[:3] == ["minmax", "entropy", "percentile"]  # calibrations before any float layer
    assert all(a["float_layers"] == 0 for a in fix["attempts"][:3])
    assert len(fix["attempts"]) > 3 and fix["float_layers"]  # no calibration alone was enough here
    added = [a["float_layers"] for a in fix["attempts"][3:]]
    assert added == sorted(added) and added[-1] == len(fix["float_layers"])  # one more layer per attempt
    assert set(fix["latency_ms"]) == {"all_int8", "with_float_layers", "cost"}
