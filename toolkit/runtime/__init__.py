"""The embeddable runtime: load an exported classifier and predict, without TensorFlow.

    from toolkit.runtime import load
    clf = load("models/demo/export/model_float32.onnx")
    clf.predict("lesion.jpg")[0].label

Only numpy, Pillow and ONNX Runtime or the LiteRT interpreter are imported
(`.keras` files are the exception and need TensorFlow). Labels, input size and
pixel scaling come from the artifact: ONNX metadata, or the export manifest
beside the file, whose sha256 must match. Decoding goes through the same
function training used, so the model sees the pixels the parity gate checked.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from toolkit.errors import DatasetError, RuntimeModelError
from toolkit.fileio import sha256_file
from toolkit.imaging import ImageSource, load_image_array
from toolkit.operating_point import Decision, decision_from_json, parse_labels_payload
from toolkit.runtime.backends import Backend, open_backend

__all__ = ["Classifier", "Prediction", "load", "PIXEL_SCALES"]

PIXEL_SCALES = ("0..255", "0..1")
MANIFEST_NAME = "manifest.json"


@dataclasses.dataclass
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float]
    index: int

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]


@dataclasses.dataclass
class ModelInfo:
    labels: list[str] | None = None
    image_size: tuple[int, int] | None = None
    pixel_scale: str | None = None
    source: str = "model"  # where labels came from: onnx-metadata, manifest, argument, default
    decision: dict | None = None  # {"positive_class", "threshold", "criterion"} for binary models


def _manifest_entry(path: Path, verify: bool) -> dict | None:
    manifest = path.parent / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeModelError(f"cannot read {manifest}: {exc}") from exc
    for entry in data.get("artifacts", []):
        if Path(entry.get("path", "")).name == path.name:
            if verify and entry.get("sha256") != sha256_file(path):
                raise RuntimeModelError(
                    f"{path.name} does not match the sha256 in {manifest.name} (modified or corrupt); "
                    "pass --no-verify to load it anyway"
                )
            return entry
    return None


def _info_from_metadata(meta: dict[str, str]) -> ModelInfo:
    info = ModelInfo()
    if "labels" in meta:
        try:
            info.labels = list(json.loads(meta["labels"]))
        except ValueError:
            info.labels = meta["labels"].split(",")
        info.source = "onnx-metadata"
    if "image_size" in meta:
        try:
            size = json.loads(meta["image_size"])
            info.image_size = (int(size[0]), int(size[1])) if isinstance(size, list) else (int(size), int(size))
        except (ValueError, TypeError, IndexError):
            pass
    if meta.get("pixel_scale") in PIXEL_SCALES:
        info.pixel_scale = meta["pixel_scale"]
    if "decision" in meta:
        try:
            info.decision = json.loads(meta["decision"])
        except ValueError:
            pass
    return info


class Classifier:
    """A loaded image classifier; `predict` is safe to call from several threads."""

    def __init__(
        self,
        backend: Backend,
        info: ModelInfo,
        image_size: tuple[int, int],
        path: Path,
    ):
        self.backend = backend
        self.labels = list(info.labels or [])
        self.image_size = image_size
        self.path = path
        self.label_source = info.source
        # Binary models: the positive class and its threshold (the operating point chosen on validation).
        self.decision: Decision | None = decision_from_json(self.labels, info.decision)

    @property
    def provider(self) -> str:
        """The execution provider that actually runs: "cpu" or "cuda"."""
        return self.backend.provider

    @property
    def format(self) -> str:
        return self.backend.kind

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """Decode and resize one image exactly as training did (uint8 HxWx3)."""
        return load_image_array(image, self.image_size)

    def predict_arrays(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities for an already-resized uint8 NxHxWx3 batch."""
        if pixels.ndim != 4 or pixels.shape[1:3] != tuple(self.image_size) or pixels.shape[3] != 3:
            raise DatasetError(f"expected uint8 Nx{self.image_size[0]}x{self.image_size[1]}x3, got {pixels.shape}")
        out = [
            self.backend.run(np.ascontiguousarray(pixels[i : i + batch_size]))
            for i in range(0, len(pixels), batch_size)
        ]
        probs = np.concatenate(out, axis=0) if out else np.zeros((0, len(self.labels)), np.float32)
        if probs.shape[1] != len(self.labels):
            raise RuntimeModelError(f"model outputs {probs.shape[1]} classes but {len(self.labels)} labels are known")
        return probs

    def predict(self, images: ImageSource | Iterable[ImageSource], batch_size: int = 32) -> list[Prediction]:
        """Predict one image or many: paths, bytes, PIL images or uint8 arrays."""
        items = _as_list(images)
        pixels = (
            np.stack([self.preprocess(item) for item in items])
            if items
            else np.zeros((0, *self.image_size, 3), np.uint8)
        )
        return [self.to_prediction(p) for p in self.predict_arrays(pixels, batch_size)]

    def predict_files(
        self, paths: Iterable[str | os.PathLike[str]], batch_size: int = 32
    ) -> Iterator[tuple[str | os.PathLike[str], Prediction | None, DatasetError | None]]:
        """(path, prediction, None) per readable image and (path, None, error) per unreadable one, in order.

        Decodes and predicts `batch_size` at a time, so a folder of any size streams through.
        """
        batch: list[tuple[str | os.PathLike[str], np.ndarray]] = []
        for path in paths:
            try:
                batch.append((path, self.preprocess(path)))
            except DatasetError as exc:
                yield from self._flush(batch, batch_size)
                yield path, None, exc
                continue
            if len(batch) >= batch_size:
                yield from self._flush(batch, batch_size)
        yield from self._flush(batch, batch_size)

    def _flush(self, batch: list, batch_size: int):
        if batch:
            probs = self.predict_arrays(np.stack([pixels for _, pixels in batch]), batch_size)
            yield from ((path, self.to_prediction(p), None) for (path, _), p in zip(batch, probs))
            batch.clear()

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Class indices for a batch of probabilities: the stored operating point, or argmax."""
        return self.decision.predict(probs) if self.decision else np.asarray(probs).argmax(axis=1)

    def to_prediction(self, probs: np.ndarray) -> Prediction:
        """The label (at the operating point for binary models), its probability, and all probabilities."""
        index = int(self.decide(np.asarray(probs)[None])[0])
        return Prediction(
            label=self.labels[index],
            score=float(probs[index]),
            probabilities={label: float(p) for label, p in zip(self.labels, probs)},
            index=index,
        )


def _as_list(images) -> list:
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)):
        return [images]
    if isinstance(images, np.ndarray):
        return [images] if images.ndim in (2, 3) else list(images)
    try:
        from PIL import Image

        if isinstance(images, Image.Image):
            return [images]
    except ImportError:  # pragma: no cover
        pass
    return list(images)


def load(
    path: str | os.PathLike[str],
    device: str = "auto",
    threads: int | None = None,
    labels: Sequence[str] | None = None,
    pixel_scale: str | None = None,
    verify: bool = True,
    allow_external_data: bool = False,
) -> Classifier:
    """Load a `.onnx`, `.tflite` (or, with TensorFlow, `.keras`) classifier.

    `labels` and `pixel_scale` ("0..255" or "0..1") are for models made
    elsewhere; toolkit artifacts carry both. `verify` checks the file against
    the sha256 in a manifest beside it. ONNX external data is refused unless
    `allow_external_data`, and then only inside the model's folder.
    """
    path = Path(path)
    if pixel_scale is not None and pixel_scale not in PIXEL_SCALES:
        raise RuntimeModelError(f"pixel_scale must be one of {', '.join(PIXEL_SCALES)}")
    if not path.is_file():
        raise RuntimeModelError(f"model file not found: {path}")
    entry = _manifest_entry(path, verify)
    backend = open_backend(path, device, threads, pixel_scale or "0..255", allow_external_data)
    info = _info_from_metadata(backend.metadata())
    if entry is not None:
        info.decision = info.decision or entry.get("decision")
        info.labels = info.labels or entry.get("labels")
        if info.source == "model" and entry.get("labels"):
            info.source = "manifest"
        if info.image_size is None and entry.get("image_size"):
            info.image_size = (int(entry["image_size"]), int(entry["image_size"]))
    if path.suffix.lower() == ".keras" and info.labels is None:
        sidecar = path.parent / "labels.json"
        if sidecar.is_file():
            info.labels, info.decision, info.source = *_read_sidecar(sidecar), "labels.json"
    if pixel_scale is None and info.pixel_scale:
        backend.pixel_scale = info.pixel_scale
    if labels is not None:
        if info.labels is not None and list(labels) != info.labels:
            info.decision = None  # relabelled: the stored positive class may no longer mean the same
        info.labels, info.source = list(labels), "argument"
    image_size = info.image_size or backend.image_size
    if not image_size or not all(image_size):
        raise RuntimeModelError(f"{path.name} has no fixed input size; it cannot be inferred")
    if info.labels is None:
        # A foreign model without labels: probe its output width and number the classes.
        probe = backend.run(np.zeros((1, *image_size, 3), np.uint8))
        info.labels, info.source = [str(i) for i in range(probe.shape[1])], "default"
    return Classifier(backend, info, tuple(image_size), path)


def _read_sidecar(path: Path) -> tuple[list[str], dict | None]:
    """labels.json beside a .keras file, in either of its forms (see `parse_labels_payload`)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeModelError(f"cannot read {path}: {' '.join(str(exc).split())[:120]}") from None
    labels, decision = parse_labels_payload(data, str(path))
    return labels, decision.to_json() if decision else None
