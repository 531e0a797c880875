"""The embeddable runtime: load an exported classifier and predict, without TensorFlow.

    from toolkit.runtime import load
    clf = load("models/demo/export/model_float32.onnx")
    clf.predict("lesion.jpg")[0].label
    clf.info  # the model-facts record: labels, decision, input, base, ...

Only numpy, Pillow and ONNX Runtime or the LiteRT interpreter are imported
(`.keras` files need TensorFlow, `.xml` files OpenVINO). Labels, input size, pixel
range and the operating point come from the model-facts record inside the file
(`toolkit.facts`), so a file copied alone into an app knows them; the manifest beside
it, when present, must agree and must match the file's sha256. Decoding goes
through the same function training used, so the model sees the pixels the parity
gate checked.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from toolkit.errors import DatasetError, RuntimeModelError
from toolkit.facts import FACTS_KEY, InputSpec, ModelFacts
from toolkit.fileio import sha256_file
from toolkit.imaging import ImageSource, load_image_array
from toolkit.layout import LABELS, manifest_artifacts
from toolkit.layout import MANIFEST as MANIFEST_NAME
from toolkit.operating_point import Decision, decision_from_json, parse_labels_payload
from toolkit.runtime.backends import open_backend
from toolkit.runtime.base import Backend, Device, PixelScale

__all__ = ["Classifier", "LoadOptions", "ModelFacts", "Prediction", "PredictOptions", "load", "Device", "PixelScale"]


@dataclasses.dataclass
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float]
    index: int

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]


@dataclasses.dataclass
class LoadOptions:
    """How `load` opens a model: the only home of these defaults (the CLI reads them from here)."""

    device: str = Device.auto
    threads: int | None = None  # intra-op threads (default: all cores)
    labels: Sequence[str] | None = None  # for models made elsewhere; toolkit artifacts carry theirs
    pixel_scale: str | None = None  # "0..255" or "0..1", for models made elsewhere
    verify: bool = True  # check the content digest in the file's record, and the manifest beside it
    allow_external_data: bool = False  # ONNX external data, only inside the model's folder


@dataclasses.dataclass
class PredictOptions:
    """`toolkit predict`'s own defaults: small batches, so a folder of any size streams through."""

    top_k: int = 1
    batch_size: int = 16


def _manifest_entry(path: Path, verify: bool) -> dict | None:
    manifest = path.parent / MANIFEST_NAME
    if not manifest.is_file():
        return None
    for entry in manifest_artifacts(manifest):
        if Path(entry["path"]).name == path.name:
            if verify and entry.get("sha256") != sha256_file(path):
                raise RuntimeModelError(
                    f"{path.name} does not match the sha256 in {manifest.name} (modified or corrupt); "
                    "pass --no-verify to load it anyway"
                )
            return entry
    return None


def _legacy_facts(meta: dict[str, str], image_size: tuple[int, int]) -> ModelFacts | None:
    """Files exported before the facts record: the separate ONNX metadata keys of toolkit 0.2."""
    if "labels" not in meta:
        return None
    try:
        labels = list(json.loads(meta["labels"]))
    except ValueError:
        labels = meta["labels"].split(",")
    try:
        size = json.loads(meta.get("image_size", "null"))
        height, width = (int(size[0]), int(size[1])) if isinstance(size, list) else (int(size), int(size))
    except (ValueError, TypeError, IndexError):
        height, width = image_size
    try:
        decision = json.loads(meta["decision"]) if "decision" in meta else None
    except ValueError:
        decision = None
    pixel_range = meta.get("pixel_scale") if meta.get("pixel_scale") in tuple(PixelScale) else "0..255"
    return ModelFacts(
        labels=tuple(labels),
        input=InputSpec(height, width, pixel_range=pixel_range),
        decision=decision,
        preprocessing=meta.get("preprocessing", ""),
        toolkit_version=meta.get("toolkit_version", ""),
        source_sha256=meta.get("source_sha256"),
    )


def read_facts(backend: Backend, path: Path) -> ModelFacts | None:
    """The record the file carries (every toolkit artifact), or its older separate keys, or None."""
    meta = backend.metadata()
    if FACTS_KEY in meta:
        return ModelFacts.loads(meta[FACTS_KEY], path.name)
    return _legacy_facts(meta, backend.image_size)


def foreign_facts(labels: Sequence[str], image_size: tuple[int, int], pixel_scale: str) -> ModelFacts:
    """What is known of a model made elsewhere: its labels (given or numbered) and its input."""
    return ModelFacts(
        labels=tuple(labels),
        input=InputSpec(image_size[0], image_size[1], pixel_range=pixel_scale),
        decision=None,
        preprocessing="unknown (a model made elsewhere)",
        toolkit_version="",
        base="unknown",
    )


class Classifier:
    """A loaded image classifier; `predict` is safe to call from several threads."""

    def __init__(self, backend: Backend, info: ModelFacts, label_source: str, path: Path):
        self.backend = backend
        self.info = info  # the model-facts record, as the file (or the run folder, for .keras) states it
        self.labels = list(info.labels)
        self.image_size = info.image_size
        self.path = path
        self.label_source = label_source  # model-facts, manifest, labels.json, argument or default
        self.verified = False  # the content matched the digest in the file's own record (set by `load`)
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

    def _check_pixels(self, pixels: np.ndarray) -> None:
        if pixels.ndim != 4 or pixels.shape[1:3] != tuple(self.image_size) or pixels.shape[3] != 3:
            raise DatasetError(f"expected uint8 Nx{self.image_size[0]}x{self.image_size[1]}x3, got {pixels.shape}")

    def predict_arrays(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities for an already-resized uint8 NxHxWx3 batch."""
        self._check_pixels(pixels)
        out = [
            self.backend.run(np.ascontiguousarray(pixels[i : i + batch_size]))
            for i in range(0, len(pixels), batch_size)
        ]
        probs = np.concatenate(out, axis=0) if out else np.zeros((0, len(self.labels)), np.float32)
        if probs.shape[1] != len(self.labels):
            raise RuntimeModelError(f"model outputs {probs.shape[1]} classes but {len(self.labels)} labels are known")
        return probs

    @property
    def has_heatmap(self) -> bool:
        """Whether the file is a heatmap artifact (`toolkit export RUN --heatmap`): its record says so."""
        return self.info.heatmap is not None

    def heatmap_arrays(self, pixels: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities N x K, Grad-CAM maps N x h x w x K) of a heatmap artifact, for a resized uint8 batch.

        The maps are the artifact's own output, one per label on the base's feature grid;
        `toolkit.runtime.heatmap` picks, scales and resizes them.
        """
        self._check_pixels(pixels)
        if not self.has_heatmap:
            raise RuntimeModelError(
                f"{self.path.name} has no heatmap output: export one with `toolkit export RUN --heatmap`"
            )
        chunks = [
            self.backend.run_heatmap(np.ascontiguousarray(pixels[i : i + batch_size]))
            for i in range(0, len(pixels), batch_size)
        ]
        if not chunks:
            grid = self.info.heatmap.get("grid", [1, 1])
            return np.zeros((0, len(self.labels)), np.float32), np.zeros((0, *grid, len(self.labels)), np.float32)
        return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])

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


def load(path: str | os.PathLike[str], **options) -> Classifier:
    """Load a `.onnx`, `.tflite`, `.xml` (OpenVINO IR) or (with TensorFlow) `.keras` classifier.

    `options` are `LoadOptions` fields: `device`, `threads`, `labels` and
    `pixel_scale` (for models made elsewhere; toolkit artifacts carry both),
    `verify` (the content digest in the file's own record, and the sha256 and record in a
    manifest beside the file) and `allow_external_data`
    (ONNX external data, only inside the model's folder).
    """
    try:
        opts = LoadOptions(**options)
    except TypeError as exc:
        raise RuntimeModelError(f"load(): {exc}") from None
    path = Path(path)
    if opts.pixel_scale is not None and opts.pixel_scale not in tuple(PixelScale):
        raise RuntimeModelError(f"pixel_scale must be one of {', '.join(PixelScale)}")
    if not path.is_file():
        raise RuntimeModelError(f"model file not found: {path}")
    entry = _manifest_entry(path, opts.verify)
    backend = open_backend(path, opts.device, opts.threads, opts.pixel_scale or "0..255", opts.allow_external_data)
    facts, source = _facts_for(backend, path, entry, opts.verify)
    verified = _check_content(backend, facts, path) if opts.verify and source == "model-facts" else False
    if facts is not None and opts.pixel_scale is None:
        backend.pixel_scale = facts.input.pixel_range
    if opts.labels is not None:
        facts = _relabelled(facts, list(opts.labels), backend, opts.pixel_scale or "0..255")
        source = "argument"
    if facts is None:
        facts, source = _probed_facts(backend, path, opts.pixel_scale or "0..255"), "default"
    classifier = Classifier(backend, facts, source, path)
    classifier.verified = verified
    return classifier


def _check_content(backend: Backend, facts: ModelFacts, path: Path) -> bool:
    """True when the file's content matches the digest its record carries; a mismatch is refused."""
    if not facts.content_sha256:
        return False
    if backend.content_digest() != facts.content_sha256:
        raise RuntimeModelError(
            f"{path.name} does not match the content digest in its model-facts record (modified or corrupt); "
            "pass --no-verify to load it anyway"
        )
    return True


def _facts_for(backend: Backend, path: Path, entry: dict | None, verify: bool) -> tuple[ModelFacts | None, str]:
    """The file's own record (checked against the manifest entry beside it), or labels.json for .keras."""
    facts = read_facts(backend, path)
    stated = (
        ModelFacts.from_json(entry["facts"], f"{MANIFEST_NAME} entry for {path.name}")
        if entry and "facts" in entry
        else None
    )
    if verify and facts is not None and stated is not None and facts.to_json() != stated.to_json():
        raise RuntimeModelError(f"{path.name}: its model-facts record disagrees with {MANIFEST_NAME} beside it")
    if facts is not None:
        return facts, "model-facts"
    if stated is not None:
        return stated, "manifest"
    if entry is not None and entry.get("labels"):  # manifests of toolkit 0.2
        size = int(entry.get("image_size") or backend.image_size[0])
        legacy = ModelFacts(tuple(entry["labels"]), InputSpec.square(size), entry.get("decision"), "", "")
        return legacy, "manifest"
    sidecar = path.parent / LABELS
    if path.suffix.lower() == ".keras" and sidecar.is_file():
        labels, decision = _read_sidecar(sidecar)
        return ModelFacts(tuple(labels), InputSpec(*backend.image_size), decision, "", ""), LABELS
    return None, "default"


def _relabelled(facts: ModelFacts | None, labels: list[str], backend: Backend, pixel_scale: str) -> ModelFacts:
    if facts is None:
        return foreign_facts(labels, _fixed_size(backend), pixel_scale)
    decision = facts.decision if list(facts.labels) == labels else None  # the positive class may mean another
    return dataclasses.replace(facts, labels=tuple(labels), decision=decision)


def _fixed_size(backend: Backend) -> tuple[int, int]:
    size = backend.image_size
    if not size or not all(size):
        raise RuntimeModelError("the model has no fixed input size; it cannot be inferred")
    return tuple(size)


def _probed_facts(backend: Backend, path: Path, pixel_scale: str) -> ModelFacts:
    """A foreign model without labels: probe its output width and number the classes."""
    try:
        size = _fixed_size(backend)
    except RuntimeModelError:
        raise RuntimeModelError(f"{path.name} has no fixed input size; it cannot be inferred") from None
    probe = backend.run(np.zeros((1, *size, 3), np.uint8))
    return foreign_facts([str(i) for i in range(probe.shape[1])], size, pixel_scale)


def _read_sidecar(path: Path) -> tuple[list[str], dict | None]:
    """labels.json beside a .keras file, in either of its forms (see `parse_labels_payload`)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeModelError(f"cannot read {path}: {' '.join(str(exc).split())[:120]}") from None
    labels, decision = parse_labels_payload(data, str(path))
    return labels, decision.to_json() if decision else None
