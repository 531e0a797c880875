from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from toolkit.errors import DeviceError, RuntimeModelError

ARTIFACTS = [
    "model_float32.onnx",
    "model_int8.onnx",
    "model_float32.tflite",
    "model_float16.tflite",
    "model_dynamic.tflite",
    "model_int8.tflite",
]


def _val_images(run: Path) -> list[Path]:
    from tests.conftest import validation_files

    return validation_files(run)


@pytest.mark.parametrize("name", ARTIFACTS)
def test_predictions_agree_with_the_parity_record(exported_run, name):
    from toolkit.runtime import load

    entry = next(
        a for a in json.loads((exported_run / "export" / "manifest.json").read_text())["artifacts"] if a["path"] == name
    )
    clf = load(exported_run / "export" / name, device="cpu", threads=1)
    assert clf.labels == ["benign", "malignant"] and clf.image_size == (32, 32) and clf.provider == "cpu"
    images = _val_images(exported_run)
    preds = clf.predict(images, batch_size=3)
    labels = [0 if "benign" in p.parent.name else 1 for p in images]
    accuracy = float(np.mean([p.index == y for p, y in zip(preds, labels)]))
    assert accuracy == pytest.approx(entry["parity"]["accuracy"])
    for p in preds:
        assert p.label in clf.labels and p.score == max(p.probabilities.values())
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-2)


def test_runtime_and_training_pipeline_see_identical_pixels(exported_run):
    from toolkit.data import SplitOptions, discover_dataset, load_split_images
    from toolkit.runtime import load

    config = json.loads((exported_run / "config.json").read_text())
    split = discover_dataset(config["data_dir"], SplitOptions(val_split=0.25, seed=1))
    train_pixels = load_split_images(split.val, (32, 32), cache_dir=None)
    clf = load(exported_run / "export" / "model_float32.onnx")
    for path, pixels in zip(train_pixels.paths, train_pixels.images):
        np.testing.assert_array_equal(clf.preprocess(path), pixels)


def test_accepts_paths_bytes_pil_and_arrays(exported_run):
    from PIL import Image

    from toolkit.runtime import load

    clf = load(exported_run / "export" / "model_float32.onnx")
    path = _val_images(exported_run)[0]
    pil = Image.open(path)
    results = [
        clf.predict(path)[0],
        clf.predict(str(path))[0],
        clf.predict(path.read_bytes())[0],
        clf.predict(pil)[0],
        clf.predict(np.asarray(pil.convert("RGB")))[0],
    ]
    for r in results[1:]:
        assert r.probabilities == pytest.approx(results[0].probabilities, abs=1e-6)


def test_lone_onnx_file_carries_its_labels(exported_run, tmp_path):
    import shutil

    from toolkit.runtime import load

    lone = tmp_path / "model.onnx"
    shutil.copy(exported_run / "export" / "model_float32.onnx", lone)
    clf = load(lone)
    assert clf.labels == ["benign", "malignant"] and clf.label_source == "model-facts"


def test_foreign_nchw_model_with_given_labels_and_scaling(tmp_path):
    """A model made elsewhere: NCHW float input in 0..1, labels passed in."""
    import onnx
    from onnx import TensorProto, helper

    from toolkit.runtime import load

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2, 3], keepdims=0),
            helper.make_node("Softmax", ["mean"], ["out"], axis=1),
        ],
        "foreign",
        [x],
        [y],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    clf = load(tmp_path / "foreign.onnx", labels=["r", "g", "b"], pixel_scale="0..1")
    assert clf.backend.layout == "NCHW" and clf.image_size == (8, 8)
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    assert clf.predict(red)[0].label == "r"
    assert load(tmp_path / "foreign.onnx").labels == ["0", "1", "2"]


def _predict_from_threads(clf, images, n_threads=6):
    """Each thread predicts the same images in a rotated order with its own batch size."""
    errors: list[BaseException] = []
    results: dict[int, list] = {}

    def worker(i: int) -> None:
        try:
            shift = i % len(images)
            got = clf.predict(images[shift:] + images[:shift], batch_size=1 + i % 3)
            results[i] = [got[(k - shift) % len(images)].probabilities for k in range(len(images))]
        except BaseException as exc:  # surfaced by the caller
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors, results


def test_cuda_listed_but_not_running_is_refused_not_silently_on_cpu(exported_run, monkeypatch):
    """onnxruntime-gpu lists CUDA, but the session fell back to CPU (no driver, missing cuDNN)."""
    import onnxruntime as ort

    from toolkit.runtime import load

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real_session = ort.InferenceSession

    class FellBackToCpu(real_session):
        def __init__(self, source, sess_options=None, providers=None, **kwargs):
            assert providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
            super().__init__(source, sess_options=sess_options, providers=["CPUExecutionProvider"], **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", FellBackToCpu)
    with pytest.raises(DeviceError, match="runs CPUExecutionProvider"):
        load(exported_run / "export" / "model_float32.onnx", device="cuda")
    clf = load(exported_run / "export" / "model_float32.onnx", device="auto")
    assert clf.provider == "cpu"  # auto reports what really runs


def test_loading_a_tflite_model_leaves_the_hosts_file_descriptors_alone(exported_run, monkeypatch):
    import os

    from toolkit.runtime import load

    def refuse(*_args):
        raise AssertionError("the runtime redirected a file descriptor")

    with monkeypatch.context() as patched:  # undone before pytest restores its own captured descriptors
        patched.setattr(os, "dup2", refuse)
        patched.setattr(os, "dup", refuse)
        for name in ("model_int8.tflite", "model_float32.onnx"):
            load(exported_run / "export" / name).predict(_val_images(exported_run)[0])


def test_classifier_is_thread_safe(exported_run):
    from toolkit.runtime import load

    images = _val_images(exported_run)
    for name in ("model_float32.onnx", "model_int8.tflite"):
        clf = load(exported_run / "export" / name, threads=1)
        expected = [p.probabilities for p in clf.predict(images)]
        errors, results = _predict_from_threads(clf, images)
        assert not errors and len(results) == 6
        for got in results.values():
            for g, e in zip(got, expected):
                assert g == pytest.approx(e, abs=1e-6)


def test_runtime_never_imports_tensorflow(exported_run):
    code = f"""
import sys
from toolkit.runtime import load
for name in ("model_float32.onnx", "model_int8.tflite"):
    clf = load({str(exported_run / "export")!r} + "/" + name)
    clf.predict({str(_val_images(exported_run)[0])!r})
bad = [m for m in ("tensorflow", "keras", "typer", "tf2onnx") if m in sys.modules]
print("HEAVY:" + ",".join(bad))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY:\n" in out


def test_cuda_request_fails_clearly_without_a_cuda_provider(exported_run):
    import onnxruntime as ort

    from toolkit.runtime import load

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("needs a machine without a CUDA GPU (this one has the CUDA provider)")
    with pytest.raises(DeviceError, match="cuda"):
        load(exported_run / "export" / "model_float32.onnx", device="cuda")
    with pytest.raises(DeviceError, match="tflite"):
        load(exported_run / "export" / "model_int8.tflite", device="cuda")


def test_cuda_provider_matches_cpu(exported_run):
    import onnxruntime as ort

    from toolkit.runtime import load

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs an NVIDIA GPU with onnxruntime-gpu (no CUDA provider on this machine)")
    images = _val_images(exported_run)
    path = exported_run / "export" / "model_float32.onnx"
    cuda = load(path, device="cuda")
    assert cuda.provider == "cuda"
    cpu_probs = np.array([list(p.probabilities.values()) for p in load(path, device="cpu").predict(images)])
    gpu_probs = np.array([list(p.probabilities.values()) for p in cuda.predict(images)])
    np.testing.assert_allclose(gpu_probs, cpu_probs, atol=1e-3)


def test_modified_artifact_is_refused_unless_verification_is_off(exported_run, tmp_path):
    import shutil

    from toolkit.runtime import load

    export = tmp_path / "export"
    shutil.copytree(exported_run / "export", export)
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    data = bytearray((export / "model_int8.tflite").read_bytes())
    interpreter = Interpreter(  # no XNNPACK: it takes the constant tensors over, leaving them unreadable
        model_path=str(export / "model_int8.tflite"),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    tensors = [  # convolution kernels (OHWI, O > 1), not the batch-of-1 activations
        d
        for d in interpreter.get_tensor_details()
        if d["dtype"] == np.int8 and len(d["shape"]) == 4 and d["shape"][0] > 1
    ]
    kernel = interpreter.get_tensor(max(tensors, key=lambda d: np.prod(d["shape"]))["index"]).tobytes()
    at = data.find(kernel)
    assert at > 0
    data[at + len(kernel) // 2] ^= 0xFF  # inside the largest kernel: still a valid flatbuffer
    (export / "model_int8.tflite").write_bytes(bytes(data))
    with pytest.raises(RuntimeModelError, match="sha256"):
        load(export / "model_int8.tflite")
    load(export / "model_int8.tflite", verify=False)


@pytest.mark.parametrize(
    "suffix, payload",
    [(".onnx", b"\x08\x07garbage"), (".tflite", b"TFL3nonsense"), (".onnx", b""), (".keras", b"PK\x03\x04broken")],
)
def test_corrupt_model_files_raise_runtime_errors(tmp_path, suffix, payload):
    from toolkit.errors import ModelError
    from toolkit.runtime import load

    path = tmp_path / f"model{suffix}"
    path.write_bytes(payload)
    with pytest.raises(ModelError):
        load(path)


def _external_data_model(folder: Path, location: str) -> Path:
    """A tiny ONNX model whose single weight lives in an external file named `location`."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((1, 2), 0.5, np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Flatten", ["m"], ["flat"], axis=1),
            helper.make_node("Mul", ["flat", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "ext",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 4, 4, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 2])],
        initializer=[weight],
    )
    path = folder / "ext.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path


def test_onnx_external_data_is_refused_unless_allowed_and_inside_the_folder(tmp_path):
    from toolkit.runtime import load

    inside = tmp_path / "model"
    inside.mkdir()
    (inside / "weights.bin").write_bytes(np.full((1, 2), 0.5, np.float32).tobytes())
    model = _external_data_model(inside, "weights.bin")
    with pytest.raises(RuntimeModelError, match="allow-external-data"):
        load(model)
    clf = load(model, allow_external_data=True, labels=["a", "b"])
    assert clf.predict(np.zeros((4, 4, 3), np.uint8))[0].score == pytest.approx(0.5)

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(2, np.float32).tobytes())
    for location in ("../secret.bin", str(secret)):
        with pytest.raises(RuntimeModelError, match="outside the model's folder"):
            load(_external_data_model(inside, location), allow_external_data=True)
    (inside / "link.bin").symlink_to(secret)
    with pytest.raises(RuntimeModelError, match="outside the model's folder"):
        load(_external_data_model(inside, "link.bin"), allow_external_data=True)


def test_external_data_reader_matches_onnx_on_exported_models(exported_run):
    from toolkit.runtime.onnx_external import external_data_locations

    for name in ("model_float32.onnx", "model_int8.onnx"):
        assert external_data_locations((exported_run / "export" / name).read_bytes()) == []


def _external(name: str, location: str):
    from onnx import TensorProto, numpy_helper

    tensor = numpy_helper.from_array(np.ones(2, np.float32), name)
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def test_external_data_reader_walks_subgraphs_functions_and_sparse_tensors():
    """Every place a tensor can hide: initializers, If branches, Constant attributes in local functions."""
    from onnx import TensorProto, helper

    from toolkit.runtime.onnx_external import external_data_locations

    branch = lambda name, loc: helper.make_graph(  # noqa: E731
        [helper.make_node("Identity", [f"{name}_w"], [f"{name}_out"])],
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [2])],
        initializer=[_external(f"{name}_w", loc)],
    )
    nested_if = helper.make_node(
        "If", ["cond"], ["deep_out"], then_branch=branch("deep", "deep.bin"), else_branch=branch("deep2", "deep2.bin")
    )
    then_graph = helper.make_graph(
        [nested_if], "then", [], [helper.make_tensor_value_info("deep_out", TensorProto.FLOAT, [2])]
    )
    if_node = helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=branch("other", "else.bin"))
    function = helper.make_function(
        "local",
        "F",
        [],
        ["c"],
        [helper.make_node("Constant", [], ["c"], value=_external("const", "function.bin"))],
        [helper.make_opsetid("", 13)],
    )
    graph = helper.make_graph(
        [if_node, helper.make_node("F", [], ["z"], domain="local")],
        "main",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[_external("top", "top.bin")],
    )
    model = helper.make_model(
        graph,
        functions=[function],
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("local", 1)],
    )
    found = sorted(external_data_locations(model.SerializeToString()))
    assert found == ["deep.bin", "deep2.bin", "else.bin", "function.bin", "top.bin"]


@pytest.mark.parametrize("name", ["model_int8.tflite", "model_int8.onnx"])
def test_one_classifier_shared_by_8_threads_matches_sequential_answers(exported_run, name):
    """2,000 predictions from 8 threads at once: exactly the sequential answers, no error, bounded memory."""
    from toolkit.runtime import load

    clf = load(exported_run / "export" / name, threads=1)
    rng = np.random.default_rng(0)
    base = np.stack([clf.preprocess(p) for p in _val_images(exported_run)])
    images = np.clip(
        base[rng.integers(0, len(base), 2000)].astype(np.int16) + rng.integers(-20, 20, (2000, 32, 32, 3)), 0, 255
    ).astype(np.uint8)
    expected = clf.predict_arrays(images, batch_size=50)

    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 1e6

    before = rss_mb()
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            results[k] = clf.predict_arrays(images[k::8], batch_size=1 + k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(8):
        np.testing.assert_array_equal(results[k], expected[k::8])  # bit for bit
    assert rss_mb() - before < 300


def _save_keras_with(tmp_path: Path, layer) -> Path:
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, layer(inputs))
    path = tmp_path / "model.keras"
    model.save(path)
    return path


def test_keras_lambda_layer_is_refused_by_safe_mode(tmp_path):
    import keras

    from toolkit.errors import ModelError
    from toolkit.keras_io import load_keras_model

    path = _save_keras_with(tmp_path, keras.layers.Lambda(lambda x: x * 2))
    with pytest.raises(ModelError, match="safe_mode"):
        load_keras_model(path)


def test_keras_unknown_custom_object_is_refused(tmp_path):
    import zipfile

    import keras

    from toolkit.errors import ModelError
    from toolkit.keras_io import load_keras_model

    path = _save_keras_with(tmp_path, keras.layers.Dense(2))
    tampered = tmp_path / "tampered.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(b'"class_name": "Dense"', b'"class_name": "Evil>Backdoor"')
            dst.writestr(item, data)
    with pytest.raises(ModelError, match="refusing|cannot load"):
        load_keras_model(tampered)


def test_no_pickle_and_no_eval_in_the_package():
    import re

    root = Path(__file__).resolve().parents[1] / "toolkit"
    pattern = re.compile(r"\bimport pickle\b|allow_pickle=True|\beval\(|\bexec\(|pickle\.load")
    offenders = [str(p) for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
