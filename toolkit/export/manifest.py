"""The export manifest: one entry per artifact, rewritten atomically after every artifact.

`manifest.json` in `RUN/export/` says what was exported from which checkpoint, with each
artifact's sha256, its model-facts record, its parity verdict and the converter versions.
A different checkpoint empties it (older artifacts no longer describe it); a damaged
manifest is rebuilt from the artifacts exported now.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolkit import __version__
from toolkit.facts import ModelFacts
from toolkit.fileio import write_json_atomic
from toolkit.run_folder import MANIFEST
from toolkit.versions import package_versions

CONVERTER_PACKAGES = {
    "tf2onnx": "tf2onnx",
    "onnxruntime.quantization": "onnxruntime",
    "tensorflow.lite": "tensorflow",
    "openvino": "openvino",
    "nncf": "nncf",
}
EXTRA_PACKAGES = {"tensorflow.lite": {"mediapipe"}, "nncf": {"openvino"}}  # metadata writer; the IR's converter


def converter_versions(converter: str) -> dict[str, str]:
    extra = EXTRA_PACKAGES.get(converter, set())
    return package_versions(sorted({CONVERTER_PACKAGES[converter], "tensorflow", "keras", "onnx", *extra}))


def read_manifest(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {}  # a damaged manifest is rebuilt from the artifacts exported now
    if not isinstance(data, dict) or not isinstance(data.get("artifacts", []), list):
        return {}
    return data


def open_manifest(export_dir: Path, source_sha: str, facts: ModelFacts) -> dict:
    """The manifest to extend: the one on disk for the same checkpoint, else a fresh one."""
    manifest = read_manifest(export_dir / MANIFEST)
    if manifest.get("source", {}).get("sha256") not in (None, source_sha):
        manifest["artifacts"] = []  # a different checkpoint: older artifacts no longer describe it
    manifest.update(
        {
            "toolkit_version": __version__,
            "source": {"path": "../best.keras", "sha256": source_sha},
            "labels": list(facts.labels),
            "image_size": facts.input.height,
            "decision": facts.decision,
            "facts": facts.shared(),
        }
    )
    manifest.setdefault("artifacts", [])
    return manifest


def record_artifact(export_dir: Path, manifest: dict, entry: dict) -> None:
    """Replace the entry of the same format, precision and variant, then rewrite the manifest atomically."""

    def key(a: dict) -> tuple:
        return (a["format"], a["precision"], a.get("variant", ""))

    manifest["artifacts"] = [a for a in manifest["artifacts"] if key(a) != key(entry)] + [entry]
    write_json_atomic(export_dir / MANIFEST, manifest)
