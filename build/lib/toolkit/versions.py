"""Installed versions of the libraries that shaped an artifact, for run.json, manifests and bench reports."""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterable

from toolkit import __version__

TRAINING_PACKAGES = ("tensorflow", "keras", "numpy", "pillow", "onnx", "tf2onnx", "onnxruntime", "ai-edge-litert")


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """{"toolkit": ..., name: version} for each installed package of `names` (missing ones left out)."""
    versions = {"toolkit": __version__}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return versions
