"""Decoding every image once: the shared decoder, and a memory-mapped cache of the resized pixels.

Every file goes through the shared decoder once; what cannot be used is skipped
with a reason. The decoded, resized pixels are cached as a memory-mapped uint8
array keyed by the file list, sizes and mtimes, so epochs (and resumed runs,
exports, benchmarks) never decode again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from toolkit.errors import DatasetError
from toolkit.fileio import atomic_path, write_json_atomic
from toolkit.imaging import load_image_array
from toolkit.progress import track

CACHE_FORMAT_VERSION = 1


class LabelledPath(Protocol):
    path: str
    label: int


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclasses.dataclass
class ImageArrays:
    """Decoded images of one split: uint8 NxHxWx3 (often a read-only memmap) and labels."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    skipped: list[SkippedFile]

    def __len__(self) -> int:
        return len(self.labels)


def _cache_key(files: Sequence[LabelledPath], size: tuple[int, int]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT_VERSION, list(size)]).encode())
    for f in files:
        st = os.stat(f.path)
        digest.update(json.dumps([f.path, f.label, st.st_size, st.st_mtime_ns]).encode())
    return digest.hexdigest()[:24]


def load_split_images(
    files: Sequence[LabelledPath],
    size: tuple[int, int],
    cache_dir: str | os.PathLike[str] | None,
    root: str | os.PathLike[str] | None = None,
    name: str = "",
) -> ImageArrays:
    """Decode and resize `files` once, through the on-disk cache when given."""
    key = _cache_key(files, size)
    if cache_dir is not None:
        cached = _read_cache(Path(cache_dir), key)
        if cached is not None:
            return cached
    arrays = decode_all(files, size, root, name)
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


def decode_all(
    files: Sequence[LabelledPath], size: tuple[int, int], root: str | os.PathLike[str] | None, name: str = ""
) -> ImageArrays:
    images = np.empty((len(files), size[0], size[1], 3), dtype=np.uint8)
    kept = 0
    labels: list[int] = []
    paths: list[str] = []
    skipped: list[SkippedFile] = []
    for f in track(files, f"decoding {name + ' ' if name else ''}images"):
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
