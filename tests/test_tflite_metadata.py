"""Every TFLite export runs in MediaPipe Tasks' ImageClassifier as it is, with names, like toolkit.runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import validation_files

TFLITE = ("float32", "float16", "dynamic", "int8")


def _mediapipe_scores(model_path, pixels: list[np.ndarray], labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """MediaPipe's per-label scores (in label order) and its top category names, one row per image."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(model_path)), max_results=-1)
    rows, names = [], []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in pixels:
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
            categories = result.classifications[0].categories
            scores = {c.category_name: c.score for c in categories}
            assert set(scores) == set(labels)  # every category is named with the run's labels
            rows.append([scores[name] for name in labels])
            names.append(categories[0].category_name)
    return np.array(rows, dtype=np.float32), names


@pytest.mark.parametrize("precision", TFLITE)
def test_each_tflite_export_classifies_with_names_in_mediapipe_like_the_runtime(exported_run, precision):
    from toolkit.runtime import load

    path = exported_run / "export" / f"model_{precision}.tflite"
    runtime = load(path, device="cpu")
    labels = runtime.labels
    # MediaPipe resizes with its own filter: give it the runtime's model-sized pixels, so both see the same input.
    pixels = [runtime.preprocess(f) for f in validation_files(exported_run)]
    expected = runtime.predict_arrays(np.stack(pixels))
    scores, names = _mediapipe_scores(path, pixels, labels)
    np.testing.assert_allclose(scores, expected, atol=1e-5)  # the same file and kernels: equal, not merely close
    assert names == [labels[i] for i in expected.argmax(axis=1)]


def test_metadata_describes_raw_pixels_labels_and_the_operating_point(exported_run):
    from toolkit.export.tflite_metadata import _metadata_version_module

    _metadata_version_module()  # before MediaPipe's metadata module, which imports the missing helper
    from mediapipe.tasks.python.metadata import metadata

    manifest = json.loads((exported_run / "export" / "manifest.json").read_text())
    for precision in TFLITE:
        displayer = metadata.MetadataDisplayer.with_model_file(
            str(exported_run / "export" / f"model_{precision}.tflite")
        )
        meta = json.loads(displayer.get_metadata_json())
        graph = meta["subgraph_metadata"][0]
        norm = graph["input_tensor_metadata"][0]["process_units"][0]["options"]
        assert norm == {"mean": [0.0], "std": [1.0]}  # the model normalises in-graph: MediaPipe feeds raw 0..255
        assert graph["output_tensor_metadata"][0]["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
        packed = displayer.get_associated_file_buffer("labels.txt").decode().split()
        assert packed == manifest["labels"]
        decision = manifest["decision"]
        assert (
            f"report {decision['positive_class']} when its probability is >= {decision['threshold']:.6g}"
            in (meta["description"])
        )
        assert meta["min_parser_version"] == "1.0.0"


def test_minimum_parser_version_follows_the_schema_history():
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    from toolkit.export.tflite_metadata import _minimum_parser_version

    def packed(file_type, version=None) -> bytes:
        file = fb.AssociatedFileT()
        file.name, file.type, file.version = "a.txt", file_type, version
        tensor = fb.TensorMetadataT()
        tensor.associatedFiles = [file]
        graph = fb.SubGraphMetadataT()
        graph.inputTensorMetadata, graph.outputTensorMetadata = [tensor], []
        model = fb.ModelMetadataT()
        model.subgraphMetadata = [graph]
        builder = flatbuffers.Builder(0)
        builder.Finish(model.Pack(builder), b"M001")
        return bytes(builder.Output())

    assert _minimum_parser_version(packed(fb.AssociatedFileType.TENSOR_AXIS_LABELS)) == "1.0.0"
    assert _minimum_parser_version(packed(fb.AssociatedFileType.VOCABULARY)) == "1.0.1"
    assert _minimum_parser_version(packed(fb.AssociatedFileType.SCANN_INDEX_FILE)) == "1.4.0"
    assert _minimum_parser_version(packed(fb.AssociatedFileType.TENSOR_AXIS_LABELS, "2")) == "1.4.1"
