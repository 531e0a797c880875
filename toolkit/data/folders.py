"""Image-folder data sets: discovery, splits (train / validation / held-out test) and the data report.

Real folders hold junk (Thumbs.db, AppleDouble files, truncated uploads), so
every file goes through the shared decoder once; what cannot be used is skipped
with a reason, recorded in `data_report.json`, and never stops the run. The
decoded, resized pixels are cached as a memory-mapped uint8 array keyed by the
file list, sizes and mtimes, so epochs (and resumed runs) never decode again.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from toolkit.data.cache import ImageArrays, SkippedFile, decode_all, load_split_images
from toolkit.data.groups import grouped_split, path_groups
from toolkit.errors import DatasetError
from toolkit.fileio import write_json_atomic
from toolkit.imaging import image_extensions

VAL_DIR_NAMES = ("val", "valid", "validation")
TEST_DIR_NAME = "test"
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})


@dataclasses.dataclass(frozen=True)
class LabelledFile:
    path: str
    label: int


@dataclasses.dataclass
class DatasetSplit:
    """The files of a data set, split into training, validation and (when there is one) test.

    Validation selects (epochs, thresholds); test is held out and evaluated once.
    `val_source` says where validation came from, for run.json.
    """

    root: str
    classes: list[str]
    layout: str  # "split-folders" or "flat"
    train: list[LabelledFile]
    val: list[LabelledFile]
    skipped: list[SkippedFile]
    val_dir: str | None = None
    test: list[LabelledFile] = dataclasses.field(default_factory=list)
    val_source: str = ""


@dataclasses.dataclass(frozen=True)
class SplitOptions:
    """How to split: validation and test shares where they are carved, and the tutorial's choice."""

    val_split: float = 0.15
    test_split: float = 0.15
    seed: int = 0
    validate_on_test: bool = False
    groups: str | None = None  # a CSV of path,group: images of one group never span two carved splits
    group_pattern: str | None = None  # or a regular expression on the path under DATA_DIR (its first group)


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


def file_groups(root: Path, files: list[LabelledFile], options: SplitOptions) -> dict[str, str] | None:
    """Each file's group under `options` (None: no grouping asked)."""
    return path_groups(root, [f.path for f in files], options.groups, options.group_pattern)


def _find_val_dir(root: Path) -> Path | None:
    for name in VAL_DIR_NAMES:
        candidate = root / name
        if candidate.is_dir():
            return candidate
    return None


def _scan_folders(root: Path, folder: Path, classes: list[str], skipped: list[SkippedFile]) -> list[LabelledFile]:
    """The files of `folder/<class>/`, checking that it has the same class folders as train/."""
    found = [p.name for p in _class_dirs(folder)]
    if found != classes:
        raise DatasetError(f"class folders differ between train/ {classes} and {folder.name}/ {found}")
    files: list[LabelledFile] = []
    for label, name in enumerate(classes):
        got, skip = _scan_class_dir(folder / name, label, root)
        files += got
        skipped += skip
    return files


def _stratified_split(
    files: list[LabelledFile], val_split: float, seed: int, groups: dict[str, str] | None = None
) -> tuple[list[LabelledFile], list[LabelledFile]]:
    if groups is not None:
        return grouped_split(files, val_split, seed, groups)
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


def stratified_sample(labels: np.ndarray, count: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded sample of `count` items with every class in proportion (all of them for None).

    Splits are stored sorted by class, so "the first N" would check one class only.
    """
    labels = np.asarray(labels)
    if count is None or count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * count / len(labels)).astype(int)
    leftover = count - int(quota.sum())
    quota[np.argsort(-(counts * count / len(labels) - quota), kind="stable")[:leftover]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _split_folders(root: Path, options: SplitOptions) -> DatasetSplit:
    """`train/` with `val/` and/or `test/` beside it (or neither: validation carved from train)."""
    train_dir, val_dir, test_dir = root / "train", _find_val_dir(root), root / TEST_DIR_NAME
    classes = [p.name for p in _class_dirs(train_dir)]
    _require_two_classes(classes, train_dir)
    skipped: list[SkippedFile] = []
    train = _scan_folders(root, train_dir, classes, skipped)
    test = _scan_folders(root, test_dir, classes, skipped) if test_dir.is_dir() else []
    if val_dir is not None:
        val, source = _scan_folders(root, val_dir, classes, skipped), f"{val_dir.name}/"
    elif test and options.validate_on_test:
        val, test, source = test, [], "test/ (--validate-on-test: the tutorial's choice, no held-out test)"
    else:
        _check_share("--val-split", options.val_split)
        groups = file_groups(root, train, options)
        train, val = _stratified_split(train, options.val_split, options.seed, groups)
        grouped = ", whole groups" if groups else ""
        source = f"{options.val_split:.0%} of train/, stratified{grouped}, seed {options.seed}"
    split = DatasetSplit(str(root), classes, "split-folders", train, val, skipped, val_dir.name if val_dir else None)
    split.test, split.val_source = test, source
    return split


def _flat(root: Path, options: SplitOptions) -> DatasetSplit:
    """`DATA_DIR/<class>/`: test, then validation, carved stratified and seeded."""
    _check_share("--val-split", options.val_split)
    if not 0.0 <= options.test_split < 1.0 or options.val_split + options.test_split >= 1.0:
        raise DatasetError("--test-split must be in 0..1 and leave room for training beside --val-split")
    classes = [p.name for p in _class_dirs(root)]
    _require_two_classes(classes, root)
    everything: list[LabelledFile] = []
    skipped: list[SkippedFile] = []
    for label, name in enumerate(classes):
        files, skip = _scan_class_dir(root / name, label, root)
        everything += files
        skipped += skip
    test: list[LabelledFile] = []
    groups = file_groups(root, everything, options)
    if options.test_split > 0:
        everything, test = _stratified_split(everything, options.test_split, options.seed, groups)
    share = options.val_split / (1.0 - options.test_split)  # of what is left after the test split
    train, val = _stratified_split(everything, share, options.seed + 1, groups)
    split = DatasetSplit(str(root), classes, "flat", train, val, skipped)
    split.test = test
    grouped = ", whole groups" if groups else ""
    split.val_source = f"{options.val_split:.0%} of the images, stratified{grouped}, seed {options.seed}"
    return split


def _check_share(flag: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise DatasetError(f"{flag} must be between 0 and 1, got {value}")


def discover_dataset(data_dir: str | os.PathLike[str], options: SplitOptions = SplitOptions()) -> DatasetSplit:
    """Find classes and files, split into train, validation and test.

    * `train/` + `val/` (or `valid/`, `validation/`) [+ `test/`]: validation selects, test is held out;
    * `train/` + `test/`: validation is carved from train (`val_split`), test held out; with
      `validate_on_test` the tutorial's behaviour (validate on test/, no held-out test);
    * flat `DATA_DIR/<class>/`: test and validation carved by `test_split` and `val_split`.
    """
    root = Path(data_dir)
    if not root.exists():
        raise DatasetError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"not a folder: {root}")
    if (root / "train").is_dir():
        return _split_folders(root, options)
    return _flat(root, options)


def _require_two_classes(classes: list[str], folder: Path) -> None:
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise DatasetError(f"need at least two class folders in {folder}, found {len(classes)} ({found})")


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
    val_source: str = ""

    @property
    def used(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


@dataclasses.dataclass
class LoadedDataset:
    """A data set decoded for training: the splits' pixels (test None without a test split) and the report."""

    split: DatasetSplit
    train: ImageArrays
    val: ImageArrays
    test: ImageArrays | None
    report: DataReport

    @property
    def classes(self) -> list[str]:
        return self.split.classes


def build_data_report(split: DatasetSplit, arrays: dict[str, ImageArrays]) -> DataReport:
    counts = {
        name: {cls: int((arr.labels == i).sum()) for i, cls in enumerate(split.classes)} for name, arr in arrays.items()
    }
    skipped = list(split.skipped) + [s for arr in arrays.values() for s in arr.skipped]
    scanned = len(split.skipped) + len(split.train) + len(split.val) + len(split.test)
    return DataReport(split.root, split.layout, split.classes, counts, skipped, scanned, split.val_source)


def load_dataset(
    data_dir: str | os.PathLike[str],
    image_size: int,
    options: SplitOptions = SplitOptions(),
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedDataset:
    """Discover, decode (once, cached) and check a data set for training."""
    split = discover_dataset(data_dir, options)
    size = (image_size, image_size)
    arrays = {"train": load_split_images(split.train, size, cache_dir, split.root, "training")}
    arrays["val"] = load_split_images(split.val, size, cache_dir, split.root, "validation")
    if split.test:
        arrays["test"] = load_split_images(split.test, size, cache_dir, split.root, "test")
    hints = {"train": "train" if split.layout == "split-folders" else ".", "val": split.val_dir or ".", "test": "test"}
    for name, arr in arrays.items():
        require_images_per_class(split, name, arr, hints[name])
    report = build_data_report(split, arrays)
    return LoadedDataset(split, arrays["train"], arrays["val"], arrays.get("test"), report)


def write_data_report(report: DataReport, path: str | os.PathLike[str], check: dict | None = None) -> None:
    """data_report.json: counts and skipped files, and `toolkit check`'s findings (duplicates, leaks) when given."""
    payload = dataclasses.asdict(report)
    payload["used"] = report.used
    payload["skipped_count"] = len(report.skipped)
    if check is not None:
        payload["check"] = check
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
    arrays = decode_all(files, size, root)
    arrays.skipped = skipped + arrays.skipped
    if len(arrays) == 0:
        raise DatasetError(f"no readable image in {root}")
    return names, arrays
