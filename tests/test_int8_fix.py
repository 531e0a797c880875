"""`--int8-max-drop`: an int8 artifact that fails its gate is brought through it, calibrations first, then float layers."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.export import ExportOptions, export_run
from toolkit.parity import ParityOverrides

pytestmark = pytest.mark.slow  # repeated int8 exports

STRICT = ParityOverrides(min_agreement=1.0, max_accuracy_drop=0.0)  # every validation decision must agree


def _razor_thin_operating_point(run) -> float:
    """Put the run's threshold between its two closest validation scores: int8's noise flips a decision there.

    The tiny random model's probabilities all sit near 0.5, so any operating point in their midst
    is as fragile as a real model's near-ties; float layers remove the noise, and the decision holds.
    """
    import numpy as np

    from toolkit.keras_io import load_keras_model, predict_in_batches
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


# The tiny random model's int8 noise flips near-ties at random (see _razor_thin_operating_point); TFLite's gets
# a looser gate so that the one layer its ranking finds useful is enough to pass.
GATES = {"onnx": 0.98, "tflite": 0.95}


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_the_fix_turns_a_failing_int8_gate_into_a_pass_and_says_what_it_cost(near_tie_run, tmp_path, fmt):
    run = tmp_path / "run"
    shutil.copytree(near_tie_run, run)
    _razor_thin_operating_point(run)
    gate = ParityOverrides(min_agreement=GATES[fmt])
    base = dict(format=fmt, precisions=["int8"], calib_images=1, overrides=gate)
    plain = export_run(run, ExportOptions(**base))
    assert plain.failed, "the default gate must fail without the fix"
    fixed = CliRunner().invoke(
        app,
        ["export", str(run), "--format", fmt, "--precision", "int8", "--calib-images", "1"]
        + ["--min-agreement", str(GATES[fmt]), "--int8-max-drop", "0", "--int8-max-float-layers", "40"],
    )
    assert fixed.exit_code == 0, fixed.output
    (entry,) = json.loads((run / "export" / "manifest.json").read_text())["artifacts"]
    assert f"{fmt} int8: passed after {len(entry['int8_fix']['attempts'])} attempts" in fixed.output
    fix = entry["int8_fix"]
    assert entry["parity"]["passed"] and entry["parity"]["thresholds"]["max_accuracy_drop"] == 0.0
    methods = [a["calibration"]["method"] for a in fix["attempts"]]
    assert methods[:3] == ["minmax", "entropy", "percentile"]  # calibrations before any float layer
    assert all(a["float_layers"] == 0 and "float_head" not in a for a in fix["attempts"][:3])
    heads = [a for a in fix["attempts"][3:6] if a.get("float_head")]  # next, the head in float per calibration
    assert heads and heads == fix["attempts"][3 : 3 + len(heads)] and all(a["float_layers"] == 0 for a in heads)
    if heads[-1]["passed"]:  # the tiny head's own noise was what flipped the near-ties
        assert fix["float_head"] and fix["float_layers"] == [] and len(fix["attempts"]) == 3 + len(heads)
    else:
        assert len(heads) == 3
        _assert_layers_were_added_as_ranked(fix)
    assert set(fix["latency_ms"]) == {"all_int8", "with_float_layers", "cost", "timing"}
    assert fix["latency_ms"]["timing"] == "interleaved"


def _assert_layers_were_added_as_ranked(fix: dict) -> None:
    assert fix["float_layers"] and not fix["float_head"]
    trials = fix["attempts"][6:]
    kept = [a["float_layers"] for a in trials if a["kept"]]
    assert kept == sorted(kept) and kept[-1] == len(fix["float_layers"])  # layers are added, never silently
    flips = [a["flips"] for a in trials if a["kept"]]
    assert all(later <= earlier for earlier, later in zip(flips, flips[1:]))  # every kept layer helped
    ranked = {name for r in fix["ranking"] for name in r["layers"]}
    assert set(fix["float_layers"]) <= ranked  # only layers the decision ranking found useful


def _plant_outlier_channel(run, layer: str, following: str, factor: float = 1000.0) -> None:
    """Make `layer` hard to quantize: its most active output channel `factor` times larger, `following` compensating.

    `following` is the convolution that reads `layer`'s output (through a max-pool), so scaling that channel's
    input weights down by `factor` leaves the float model computing what it did (ReLU and max-pooling commute
    with a positive scale); but `layer`'s activation now spans a range `factor` times wider in one channel,
    which one int8 range per tensor cannot hold without crushing every other channel, and `following`'s
    weights for that channel are `factor` times smaller than the rest. The head's logits are then centred and
    spread (standard deviation 4) and the operating point put in the widest gap among the middle half of the
    scores, so the tiny random model's decisions are split and far from ties: what int8 breaks here is the
    planted layer, and nothing else.
    """
    import keras
    import numpy as np

    from toolkit.keras_io import load_keras_model
    from toolkit.model import base_model

    model = load_keras_model(run / "best.keras")
    vgg = base_model(model)
    probe = keras.Model(vgg.input, vgg.get_layer(layer).output)
    pixels = np.random.default_rng(0).uniform(-120, 120, (16, *vgg.input.shape[1:])).astype("float32")
    k = int(np.argmax(np.asarray(probe(pixels)).mean(axis=(0, 1, 2))))
    kernel, bias = vgg.get_layer(layer).get_weights()
    kernel[..., k] *= factor
    bias[k] *= factor
    vgg.get_layer(layer).set_weights([kernel, bias])
    next_kernel, next_bias = vgg.get_layer(following).get_weights()
    next_kernel[:, :, k, :] /= factor
    vgg.get_layer(following).set_weights([next_kernel, next_bias])
    _spread_decisions(run, model)


def _spread_decisions(run, model, shared_shift: float = 0.0) -> None:
    """Centre and spread the logits (standard deviation 4), put the operating point in the widest gap of the middle
    half of the scores, and save: the decisions are split and far from ties (see _plant_outlier_channel).

    `shared_shift`: then add one image-dependent value of up to that size to every logit: softmax does not change
    (it ignores a shift shared by all logits), but one int8 range for the logits must span it.
    """
    import numpy as np

    from toolkit.run_folder import load_run

    data = load_run(run).load_data()
    images = np.concatenate([np.asarray(data.val.images), np.asarray(data.train.images)])
    features = np.asarray(model.get_layer("features").predict(images, verbose=0)).reshape(len(images), -1)
    dense = model.get_layer("head").get_layer("probs")
    weights, biases = dense.get_weights()
    logits = features @ weights + biases
    margin = logits[:, 1] - logits[:, 0]
    biases = biases + np.array([1, -1]) * margin.mean() / 2
    weights, biases = weights * 4 / margin.std(), biases * 4 / margin.std()
    if shared_shift:
        direction = np.random.default_rng(1).normal(size=(weights.shape[0], 1)).astype(weights.dtype)
        weights = weights + direction * shared_shift / np.abs(features @ direction).max()
    dense.set_weights([weights, biases])
    model.save(run / "best.keras")
    scores = np.sort(np.asarray(model.predict(images, verbose=0))[:, 1])
    middle = scores[len(scores) // 4 : 3 * len(scores) // 4 + 1]
    i = int(np.argmax(np.diff(middle)))
    threshold = float((middle[i] + middle[i + 1]) / 2)
    payload = json.loads((run / "labels.json").read_text())
    payload.update(positive_class=payload["labels"][1], threshold=threshold, criterion=f"threshold={threshold}")
    (run / "labels.json").write_text(json.dumps(payload))


def _export_with_the_fix(run, fmt: str) -> tuple[str, dict]:
    """`toolkit export RUN --format FMT --precision int8` under `--int8-max-drop 0`: (its output, its entry)."""
    fixed = CliRunner().invoke(
        app,
        ["export", str(run), "--format", fmt, "--precision", "int8", "--calib-images", "8"]
        + ["--int8-max-drop", "0", "--int8-max-float-layers", "4"],
    )
    assert fixed.exit_code == 0, fixed.output
    (entry,) = json.loads((run / "export" / "manifest.json").read_text())["artifacts"]
    return fixed.output, entry


@pytest.fixture(scope="module")
def planted_run(near_tie_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("planted") / "run"
    shutil.copytree(near_tie_run, run)
    _plant_outlier_channel(run, "block3_conv1", "block4_conv1")
    return run


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_the_planted_layer_group_alone_in_float_brings_int8_through_the_gate(planted_run, tmp_path, fmt):
    """Every calibration fails on the planted model; keeping block3's stretch (to block4_conv1) float passes."""
    run = tmp_path / "run"
    shutil.copytree(planted_run, run)
    output, entry = _export_with_the_fix(run, fmt)
    fix = entry["int8_fix"]
    assert [a["passed"] for a in fix["attempts"][:3]] == [False] * 3  # no calibration holds the planted range
    assert entry["parity"]["passed"] and entry["parity"]["flips"] == 0
    stretch = ["block3_conv1", "block3_pool", "block4_conv1"]  # the planted layer, the pool, the layer it feeds
    assert fix["float_layers"] == fix["ranking"][0]["layers"]  # one group, the one that repairs most decisions
    assert all(any(part in name for part in stretch) for name in fix["float_layers"]), fix["float_layers"]
    assert all(any(part in name for name in fix["float_layers"]) for part in stretch), fix["float_layers"]


def test_a_layer_made_hard_to_quantize_is_ranked_first_and_its_figures_are_consistent(planted_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(planted_run, run)
    plain = export_run(run, ExportOptions(format="onnx", precisions=["int8"], calib_images=8, diagnose=True))
    assert plain.failed, [a["parity"] for a in plain.manifest["artifacts"]]
    report = json.loads((run / "export" / "quant_report.json").read_text())["artifacts"][0]
    planted = ("block3_conv1", "block4_conv1")  # the scaled layer and the one it feeds
    assert report["metric"] == "noise_added"
    assert any(b in report["layers"][0]["tensor"] for b in planted), report["layers"][:3]
    finite = [r for r in report["layers"] if r["model_sqnr_db"] is not None and r["model_sqnr_db"] < 100]
    assert all(r["own_sqnr_db"] >= r["model_sqnr_db"] - 0.5 for r in finite), finite  # own noise <= total drift
    fused = [r for r in report["layers"] if r["fused"] == "Relu"]
    assert fused and all(r["own_sqnr_db"] > 10 for r in fused if "block3" not in r["tensor"])  # not ReLU's mass


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_a_head_int8_cannot_range_is_kept_float_whole_before_any_layer_is_ranked(near_tie_run, tmp_path, fmt):
    """Logits sharing a shift of up to 1,000 (softmax unchanged): every calibration crushes their differences;
    the whole head in float, tried right after the calibrations, passes with nothing ranked."""
    from toolkit.keras_io import load_keras_model

    run = tmp_path / "run"
    shutil.copytree(near_tie_run, run)
    _spread_decisions(run, load_keras_model(run / "best.keras"), shared_shift=1000.0)
    output, entry = _export_with_the_fix(run, fmt)
    fix = entry["int8_fix"]
    calibrations, heads = fix["attempts"][:3], fix["attempts"][3:]
    assert not any(a["passed"] or a.get("float_head") for a in calibrations), calibrations
    assert 1 <= len(heads) <= 3 and all(a["float_head"] for a in heads) and heads[-1]["passed"], heads
    assert fix["float_head"] and fix["float_layers"] == []
    assert "ranking" not in fix and entry["parity"]["passed"]
    assert "the head kept in float" in output
