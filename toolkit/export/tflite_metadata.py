"""TFLite metadata for image classifiers, so MediaPipe Tasks and Android/iOS apps can use the file as it is.

MediaPipe's `ImageClassifier` refuses a float-input model without
NormalizationOptions and returns nameless categories without a labels file. The
metadata is written with MediaPipe's own `metadata_writers` (the maintained
successor of tflite-support's writers, which pin protobuf<4 and cannot live beside
TensorFlow 2.21): image input (RGB, mean 0, std 1: the model takes raw 0..255
pixels and normalises in-graph), the classification output with the labels file
packed into the model, and a description carrying the operating point.

One part of that writer is missing from the `mediapipe` wheel: the C extension
`mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`, used only to stamp
the minimum metadata-parser version. `_metadata_version_module` provides that
function in Python from the schema's version history (metadata_schema.fbs), and
is used only when the real extension is absent.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import tempfile
import types
from pathlib import Path

from toolkit.errors import ExportError, MissingDependencyError
from toolkit.facts import FACTS_FILE, HEATMAP_OUTPUT, ModelFacts
from toolkit.runtime.digest import tflite_digest

PYWRAP = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
BASE_VERSION = "1.0.0"


def _minimum_parser_version(buffer: bytes) -> str:
    """The oldest metadata parser that can read `buffer`, per metadata_schema.fbs's version history."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    meta = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(bytes(buffer), 0))
    found = [BASE_VERSION]
    files = list(meta.associatedFiles or [])
    for graph in meta.subgraphMetadata or []:
        files += list(graph.associatedFiles or [])
        if graph.inputProcessUnits:
            found.append("1.1.0")
        if graph.inputTensorGroups or graph.outputTensorGroups:
            found.append("1.2.0")
        if getattr(graph, "customMetadata", None):
            found.append("1.5.0")
        for tensor in list(graph.inputTensorMetadata or []) + list(graph.outputTensorMetadata or []):
            files += list(tensor.associatedFiles or [])
            if tensor.content and tensor.content.contentPropertiesType == fb.ContentProperties.AudioProperties:
                found.append("1.3.0")
            for unit in tensor.processUnits or []:
                kind = unit.optionsType
                if kind in (
                    fb.ProcessUnitOptions.BertTokenizerOptions,
                    fb.ProcessUnitOptions.SentencePieceTokenizerOptions,
                ):
                    found.append("1.1.0")
                elif kind == fb.ProcessUnitOptions.RegexTokenizerOptions:
                    found.append("1.2.1")
    for file in files:
        if file.type == fb.AssociatedFileType.VOCABULARY:
            found.append("1.0.1")
        elif file.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
            found.append("1.4.0")
        if file.version:
            found.append("1.4.1")
    return max(found, key=lambda v: tuple(int(p) for p in v.split(".")))


def _metadata_version_module() -> None:
    """Register the Python stand-in for the missing version extension, unless the real one imports."""
    try:
        importlib.import_module(PYWRAP)
        return
    except ImportError:
        pass
    parts = PYWRAP.split(".")
    for depth in range(3, len(parts)):  # the missing packages above it: mediapipe.tasks.cc, ...
        name = ".".join(parts[:depth])
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = []
            sys.modules[name] = package
    module = types.ModuleType(PYWRAP)
    module.GetMinimumMetadataParserVersion = _minimum_parser_version
    sys.modules[PYWRAP] = module
    setattr(sys.modules[".".join(parts[:-1])], parts[-1], module)


def _writer_module():
    try:
        _metadata_version_module()
        from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer
    except ImportError as exc:
        raise MissingDependencyError(f"TFLite metadata needs mediapipe ({exc}); pip install 'toolkit[train]'") from exc
    return metadata_writer


def describe_model(facts: ModelFacts) -> str:
    """The model description stored in the metadata: what goes in, what comes out, the operating point."""
    decision, (height, width) = facts.decision, facts.image_size
    text = (
        f"Image classifier ({', '.join(facts.labels)}) trained with toolkit: {facts.base.upper()} base + small head. "
        f"Input: RGB {height}x{width}, raw 0..255 pixels (normalisation is inside the model). "
        "Output: one softmax probability per label."
    )
    if facts.heatmap:
        grid = facts.heatmap["grid"]
        text += (
            f" Second output '{HEATMAP_OUTPUT}': Grad-CAM, {grid[0]}x{grid[1]}xlabels (one unnormalised map per label, "
            "in label order); scale the reported label's map by its maximum and resize it over the image."
        )
    if decision:
        text += (
            f" Operating point: report {decision['positive_class']} when its probability is >= "
            f"{decision['threshold']:.6g} ({decision.get('criterion') or 'chosen on validation'})."
        )
    return text


def _pack_facts(writer, classification, facts: ModelFacts, folder: str) -> None:
    """Pack the model-facts record beside labels.txt, declared on the output tensor.

    MediaPipe's writer has no public call for an extra associated file; the classification
    output's metadata takes a list of them, and the populator packs every listed file into
    the model's zip section, where `toolkit.runtime` reads it back without MediaPipe.
    MediaPipe Tasks ignore files of type UNKNOWN (tests run its ImageClassifier on every export).
    """
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info

    path = Path(folder) / FACTS_FILE
    path.write_text(facts.dumps())
    record = metadata_info.AssociatedFileMd(str(path), description="toolkit model-facts record (JSON)")
    classification.associated_files.append(record)
    writer._associated_files.append(str(path))


def add_classifier_metadata(path: Path, facts: ModelFacts) -> None:
    """Rewrite the TFLite file at `path` in place with image-classifier metadata, labels file and facts record.

    Populated twice: the first pass gives the flatbuffer whose digest the record carries (the
    packed files are outside it), the second packs that record; the flatbuffer must not change.
    """
    model = bytearray(Path(path).read_bytes())
    first = _populated(bytearray(model), facts)
    digest = tflite_digest(first)
    final = _populated(bytearray(model), dataclasses.replace(facts, content_sha256=digest))
    if tflite_digest(final) != digest:
        raise ExportError("TFLite metadata is not stable: the content digest changed with the packed record")
    Path(path).write_bytes(final)


def _output_ranks(model: bytearray) -> list[int]:
    """The rank of each output tensor, in the subgraph's output order (what the metadata must follow)."""
    from ai_edge_litert.interpreter import Interpreter

    return [len(o["shape_signature"]) for o in Interpreter(model_content=bytes(model)).get_output_details()]


def _add_outputs(writer, writer_module, facts: ModelFacts, ranks: list[int]):
    """One output metadata per output tensor, in order: the labelled probabilities, and a heatmap artifact's
    Grad-CAM maps as a feature output; returns the classification output's metadata (the facts go there)."""
    classification = None
    for rank in ranks:
        if rank == 4 and facts.heatmap:
            writer.add_feature_output(name=HEATMAP_OUTPUT, description="Grad-CAM maps, one per label")
        else:
            writer.add_classification_output(writer_module.Labels().add(list(facts.labels)))
            classification = writer._output_mds[-1]
    return classification


def _populated(model: bytearray, facts: ModelFacts) -> bytes:
    writer_module = _writer_module()
    try:
        writer = writer_module.MetadataWriter.create(model)
        writer.add_general_info("toolkit image classifier", describe_model(facts))
        writer.add_image_input(norm_mean=[0.0], norm_std=[1.0])
        classification = _add_outputs(writer, writer_module, facts, _output_ranks(model))
        with tempfile.TemporaryDirectory(prefix="toolkit-facts-") as folder:
            _pack_facts(writer, classification, facts, folder)
            populated, _ = writer.populate()
        del writer  # its __del__ removes a temporary folder: now, not at interpreter shutdown
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"writing TFLite metadata failed: {' '.join(str(exc).split())[:200]}") from exc
    return bytes(populated)
