"""Image-folder data sets: discovery, robust decoding, and a decoded-pixel cache.

Real folders hold junk (Thumbs.db, AppleDouble files, truncated uploads), so
every file goes through the shared decoder once; what cannot be used is skipped
with a reason, recorded in `data_report.json`, and never stops the run. The
decoded, resized pixels are cached as a memory-mapped uint8 array keyed by the
file list, sizes and mtimes, so epochs (and resumed runs) never decode again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from toolkit.errors import DatasetError
from toolkit.fileio import atomic_path, write_json_atomic
from toolkit.imaging import image_extensions, load_image_array

VAL_DIR_NAMES = ("test", "val", "valid", "validation")
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})
CACHE_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class LabelledFile:
    path: str
    label: int


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclasses.dataclass
class DatasetSplit:
    """The files of a data set, split into training and validation."""

    root: str
    classes: list[str]
    layout: str  # "split-folders" or "flat"
    train: list[LabelledFile]
    val: list[LabelledFile]
    skipped: list[SkippedFile]
    val_dir: str | None = None


@dataclasses.dataclass
class ImageArrays:
    """Decoded images of one split: uint8 NxHxWx3 (often a read-only memmap) and labels."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    skipped: list[SkippedFile]

    def __len__(self) -> int:
        return len(self.labels)


def _is_candidate(path: Path, extensions: frozenset[str]) -> str | None:
    """Return why `path` is not an image candidate, or None if it is one."""
    name = path.name
    if name.startswith("."):
        return "hidden file"
    if name.lower() in IGNORED_NAMES:
        return "system file"
    if path.suffix.lower() not in extensions:
        return "not an image file (extension)"
    return None


def _scan_class_dir(class_dir: Path, label: int, root: Path) -> tuple[list[LabelledFile], list[SkippedFile]]:
    extensions = image_extensions()
    files: list[LabelledFile] = []
    skipped: list[SkippedFile] = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            reason = _is_candidate(path, extensions)
            if reason is None and not path.is_file():
                reason = "not a regular file"
            if reason:
                skipped.append(SkippedFile(rel, reason))
            else:
                files.append(LabelledFile(str(path), label))
    return files, skipped


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _find_val_dir(root: Path) -> Path | None:
    for name in VAL_DIR_NAMES:
        candidate = root / name
        if candidate.is_dir():
            return candidate
    return None


def _stratified_split(
    files: list[LabelledFile], val_split: float, seed: int
) -> tuple[list[LabelledFile], list[LabelledFile]]:
    rng = np.random.default_rng(seed)
    train: list[LabelledFile] = []
    val: list[LabelledFile] = []
    labels = sorted({f.label for f in files})
    for label in labels:
        members = [f for f in files if f.label == label]
        order = rng.permutation(len(members))
        n_val = int(round(len(members) * val_split))
        n_val = min(max(n_val, 1), len(members) - 1) if len(members) > 1 else 0
        val.extend(members[i] for i in sorted(order[:n_val]))
        train.extend(members[i] for i in sorted(order[n_val:]))
    return train, val


def discover_dataset(data_dir: str | os.PathLike[str], val_split: float = 0.2, seed: int = 0) -> DatasetSplit:
    """Find classes and files in either supported layout.

    `DATA_DIR/train/<class>/` with `test/`, `val/` or `valid/` beside it (the
    Keras tutorial's layout), or a flat `DATA_DIR/<class>/` split here,
    stratified and seeded.
    """
    root = Path(data_dir)
    if not root.exists():
        raise DatasetError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"not a folder: {root}")
    train_dir = root / "train"
    skipped: list[SkippedFile] = []
    if train_dir.is_dir():
        val_dir = _find_val_dir(root)
        if val_dir is None:
            raise DatasetError(f"{root} has train/ but no test/, val/ or valid/ folder beside it")
        train_classes = [p.name for p in _class_dirs(train_dir)]
        val_classes = [p.name for p in _class_dirs(val_dir)]
        if train_classes != val_classes:
            raise DatasetError(f"class folders differ between train/ {train_classes} and {val_dir.name}/ {val_classes}")
        classes = train_classes
        _require_two_classes(classes, train_dir)
        train: list[LabelledFile] = []
        val: list[LabelledFile] = []
        for label, name in enumerate(classes):
            files, skip = _scan_class_dir(train_dir / name, label, root)
            train += files
            skipped += skip
            files, skip = _scan_class_dir(val_dir / name, label, root)
            val += files
            skipped += skip
        return DatasetSplit(str(root), classes, "split-folders", train, val, skipped, val_dir.name)
    if not 0.0 < val_split < 1.0:
        raise DatasetError(f"--val-split must be between 0 and 1 for a flat folder, got {val_split}")
    classes = [p.name for p in _class_dirs(root)]
    _require_two_classes(classes, root)
    everything: list[LabelledFile] = []
    for label, name in enumerate(classes):
        files, skip = _scan_class_dir(root / name, label, root)
        everything += files
        skipped += skip
    train, val = _stratified_split(everything, val_split, seed)
    return DatasetSplit(str(root), classes, "flat", train, val, skipped)


def _require_two_classes(classes: list[str], folder: Path) -> None:
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise DatasetError(f"need at least two class folders in {folder}, found {len(classes)} ({found})")


def _cache_key(files: Sequence[LabelledFile], size: tuple[int, int]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT_VERSION, list(size)]).encode())
    for f in files:
        st = os.stat(f.path)
        digest.update(json.dumps([f.path, f.label, st.st_size, st.st_mtime_ns]).encode())
    return digest.hexdigest()[:24]


def load_split_images(
    files: Sequence[LabelledFile],
    size: tuple[int, int],
    cache_dir: str | os.PathLike[str] | None,
    root: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> ImageArrays:
    """Decode and resize `files` once, through the on-disk cache when given."""
    key = _cache_key(files, size)
    if cache_dir is not None:
        cached = _read_cache(Path(cache_dir), key)
        if cached is not None:
            return cached
    arrays = _decode_all(files, size, root, progress)
    if cache_dir is not None:
        return _write_cache(Path(cache_dir), key, arrays)
    return arrays


def _relative(path: str, root: str | os.PathLike[str] | None) -> str:
    if root is None:
        return path
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _decode_all(
    files: Sequence[LabelledFile], size: tuple[int, int], root: str | os.PathLike[str] | None, progress: bool
) -> ImageArrays:
    images = np.empty((len(files), size[0], size[1], 3), dtype=np.uint8)
    kept = 0
    labels: list[int] = []
    paths: list[str] = []
    skipped: list[SkippedFile] = []
    iterator = files
    if progress and len(files) > 50:
        from rich.progress import track

        iterator = track(files, description="decoding images", transient=True)
    for f in iterator:
        try:
            images[kept] = load_image_array(f.path, size)
        except DatasetError as exc:
            skipped.append(SkippedFile(_relative(f.path, root), str(exc)))
            continue
        labels.append(f.label)
        paths.append(f.path)
        kept += 1
    return ImageArrays(images[:kept], np.asarray(labels, dtype=np.int64), paths, skipped)


def _read_cache(cache_dir: Path, key: str) -> ImageArrays | None:
    meta_path = cache_dir / f"images-{key}.json"
    data_path = cache_dir / f"images-{key}.npy"
    if not (meta_path.is_file() and data_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(data_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None  # a damaged cache is rebuilt, never trusted
    if images.shape[0] != len(meta["labels"]):
        return None
    return ImageArrays(
        images,
        np.asarray(meta["labels"], dtype=np.int64),
        meta["paths"],
        [SkippedFile(**s) for s in meta["skipped"]],
    )


def _write_cache(cache_dir: Path, key: str, arrays: ImageArrays) -> ImageArrays:
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_path = cache_dir / f"images-{key}.npy"
    with atomic_path(data_path) as tmp:
        np.save(tmp, np.ascontiguousarray(arrays.images), allow_pickle=False)
    meta = {
        "labels": arrays.labels.tolist(),
        "paths": arrays.paths,
        "skipped": [dataclasses.asdict(s) for s in arrays.skipped],
    }
    write_json_atomic(cache_dir / f"images-{key}.json", meta)  # written last: marks the cache complete
    return dataclasses.replace(arrays, images=np.load(data_path, mmap_mode="r", allow_pickle=False))


def require_images_per_class(split: DatasetSplit, name: str, arrays: ImageArrays, folder_hint: str) -> None:
    """A class with no readable image in a split cannot be trained or validated."""
    present = set(arrays.labels.tolist())
    for label, cls in enumerate(split.classes):
        if label not in present:
            raise DatasetError(f"class folder '{folder_hint}/{cls}' has no readable image ({name} split)")


@dataclasses.dataclass
class DataReport:
    root: str
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    skipped: list[SkippedFile]
    scanned: int

    @property
    def used(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def build_data_report(split: DatasetSplit, train: ImageArrays, val: ImageArrays) -> DataReport:
    counts = {
        name: {cls: int((arr.labels == i).sum()) for i, cls in enumerate(split.classes)}
        for name, arr in (("train", train), ("val", val))
    }
    skipped = list(split.skipped) + list(train.skipped) + list(val.skipped)
    scanned = len(split.skipped) + len(split.train) + len(split.val)
    return DataReport(split.root, split.layout, split.classes, counts, skipped, scanned)


def load_dataset(
    data_dir: str | os.PathLike[str],
    image_size: int,
    val_split: float = 0.2,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> tuple[DatasetSplit, ImageArrays, ImageArrays, DataReport]:
    """Discover, decode (once, cached) and check a data set for training."""
    split = discover_dataset(data_dir, val_split, seed)
    size = (image_size, image_size)
    train = load_split_images(split.train, size, cache_dir, split.root, progress)
    val = load_split_images(split.val, size, cache_dir, split.root, progress)
    train_hint = "train" if split.layout == "split-folders" else "."
    val_hint = split.val_dir if split.val_dir else "."
    require_images_per_class(split, "train", train, train_hint)
    require_images_per_class(split, "validation", val, val_hint)
    return split, train, val, build_data_report(split, train, val)


def write_data_report(report: DataReport, path: str | os.PathLike[str]) -> None:
    payload = dataclasses.asdict(report)
    payload["used"] = report.used
    payload["skipped_count"] = len(report.skipped)
    write_json_atomic(path, payload)


def load_labelled_folder(
    data_dir: str | os.PathLike[str], size: tuple[int, int], classes: Sequence[str] | None = None
) -> tuple[list[str], ImageArrays]:
    """Decode a folder of `<class>/` subfolders for evaluation (no split, no cache)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"data folder not found: {root}")
    found = [p.name for p in _class_dirs(root)]
    _require_two_classes(found, root)
    names = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DatasetError(f"class folders {unknown} in {root} are not among the model's labels {names}")
    files: list[LabelledFile] = []
    skipped: list[SkippedFile] = []
    for name in found:
        fs, skip = _scan_class_dir(root / name, names.index(name), root)
        files += fs
        skipped += skip
    arrays = _decode_all(files, size, root, progress=False)
    arrays.skipped = skipped + arrays.skipped
    if len(arrays) == 0:
        raise DatasetError(f"no readable image in {root}")
    return names, arrays
