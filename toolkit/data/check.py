"""`toolkit check DATA`: what is in a data set before anything is trained on it.

Small data sets leak: the same lesion photographed twice, a cell of one solar module in
training and its neighbour in test. A test accuracy measured across such a split is
inflated and nothing says so. The check splits the folder exactly as `toolkit train`
will (same options, same seed) and reports per split and class: counts and imbalance,
unreadable files, image sizes and aspect ratios, and duplicates within and *across*
splits: exact copies (the same bytes, SHA-256) and near-duplicates (resized or re-encoded
copies; a cropped copy when the crop is small against the image): candidates are images whose perceptual hashes (`imagehash.phash`,
64 bits) are within `near_bits` of each other, confirmed when their 32 x 32 grey thumbnails
differ by at most `near_mad` grey levels on average. The hash alone is not enough: distinct
synthetic lesions of the demo set came within 2 bits, while their thumbnails differ by 7
and more; resized and re-encoded copies differ by under 0.5 (a 3% crop of a 224 px image: 1.4). Leaks between train, validation and test are named pair by
pair. `samples.png` shows a grid of each class's images (the tutorial's "look at the
benign images" step).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.data.folders import DatasetSplit, LabelledFile, SplitOptions, discover_dataset, file_groups
from toolkit.errors import DatasetError, MissingDependencyError
from toolkit.fileio import write_json_atomic, write_with
from toolkit.imaging import load_rgb
from toolkit.progress import phase

NEAR_BITS = 8  # of 64: resized and re-encoded copies measured 0-2 apart (tests/test_check.py plants them)
NEAR_MAD = 3.0  # grey levels: such copies measured under 1.5; distinct demo lesions 7 and more
THUMB = 32
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    near_bits: int = NEAR_BITS  # perceptual-hash distance at or below which two images are candidates
    near_mad: float = NEAR_MAD  # mean absolute thumbnail difference at or below which a candidate is a duplicate
    samples_per_class: int = 8  # images per class in samples.png
    workers: int = 0  # decoding threads (0: one per core)
    strict: bool = False  # `toolkit check --strict`: exit 1 when a test image duplicates a train or val image


@dataclasses.dataclass
class Duplicate:
    """Two files that hold the same picture: `exact` (same bytes) or `near` (perceptual hashes `distance` apart)."""

    a: str
    b: str
    split_a: str
    split_b: str
    kind: str
    distance: int  # perceptual-hash bits
    mad: float = 0.0  # mean absolute difference of the 32 x 32 grey thumbnails (0..255)

    @property
    def crosses(self) -> bool:
        return self.split_a != self.split_b


@dataclasses.dataclass
class CheckReport:
    root: str
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    imbalance: float  # the largest class's training images over the smallest's
    unreadable: list[dict[str, str]]  # {"path", "reason"}
    sizes: dict[str, dict[str, float]]  # width, height, aspect (width / height): min, median, max
    near_bits: int
    near_mad: float
    duplicates: list[Duplicate]  # within one split
    leaks: list[Duplicate]  # across splits: a test or validation figure inflated
    leak_counts: dict[str, int]  # "train-test", "train-val", "val-test" -> pairs
    warnings: list[str]
    groups: int = 0  # with --groups or --group-pattern: how many
    groups_spanning: list[dict] = dataclasses.field(default_factory=list)  # {"group", "splits"}: on both sides

    @property
    def test_leaks(self) -> int:
        """Test images that duplicate an image the model learns or is selected on (what --strict refuses)."""
        return self.leak_counts.get("train-test", 0) + self.leak_counts.get("val-test", 0)

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"test_leaks": self.test_leaks}


@dataclasses.dataclass
class _Image:
    path: str
    split: str
    label: int
    sha256: str = ""
    phash: int = 0
    width: int = 0
    height: int = 0
    error: str = ""
    thumb: np.ndarray | None = None  # 32 x 32 grey, uint8: confirms near-duplicates


def _imagehash():
    try:
        import imagehash
    except ImportError:
        raise MissingDependencyError(
            "toolkit check needs imagehash (in the [train] extra): pip install 'toolkit[train]'"
        ) from None
    return imagehash


def _hash_one(item: _Image, imagehash) -> _Image:
    try:
        data = Path(item.path).read_bytes()
        img = load_rgb(data)
    except (OSError, DatasetError) as exc:
        item.error = str(exc) or type(exc).__name__
        return item
    item.sha256 = hashlib.sha256(data).hexdigest()
    item.width, item.height = img.size
    item.phash = int(str(imagehash.phash(img)), 16)
    item.thumb = np.asarray(img.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX), np.uint8)
    return item


def _images(split: DatasetSplit) -> list[_Image]:
    files: dict[str, list[LabelledFile]] = {"train": split.train, "val": split.val, "test": split.test}
    return [_Image(f.path, name, f.label) for name in SPLITS for f in files[name]]


def _hash_all(images: list[_Image], workers: int) -> list[_Image]:
    imagehash = _imagehash()
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool, phase("hashing images", len(images)) as advance:
        done = []
        for item in pool.map(lambda i: _hash_one(i, imagehash), images):
            done.append(item)
            advance(1)
    return done


def _pair_key(a: str, b: str) -> str:
    order = {name: i for i, name in enumerate(SPLITS)}
    first, second = sorted((a, b), key=order.__getitem__)
    return f"{first}-{second}"


def find_duplicates(images: list[_Image], near_bits: int, near_mad: float = NEAR_MAD) -> list[Duplicate]:
    """Every pair of readable images that are exact copies, or near-duplicates (module docstring)."""
    readable = [i for i in images if not i.error]
    hashes = np.array([i.phash for i in readable], dtype=np.uint64)
    found: list[Duplicate] = []
    chunk = 512
    for start in range(0, len(readable), chunk):
        block = hashes[start : start + chunk, None] ^ hashes[None, :]
        distance = np.bitwise_count(block)
        rows, cols = np.nonzero(distance <= near_bits)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if c <= i:
                continue
            a, b = readable[i], readable[c]
            mad = float(np.abs(a.thumb.astype(np.int16) - b.thumb.astype(np.int16)).mean())
            if a.sha256 == b.sha256:
                found.append(Duplicate(a.path, b.path, a.split, b.split, "exact", int(distance[r, c]), mad))
            elif mad <= near_mad:
                found.append(Duplicate(a.path, b.path, a.split, b.split, "near", int(distance[r, c]), round(mad, 2)))
    return found


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"min": 0.0, "median": 0.0, "max": 0.0}
    return {"min": float(min(values)), "median": float(np.median(values)), "max": float(max(values))}


def check_dataset(
    data_dir: str | os.PathLike[str],
    split_options: SplitOptions = SplitOptions(),
    options: CheckOptions = CheckOptions(),
) -> CheckReport:
    """Split `data_dir` as training would and report what is in it (module docstring)."""
    split = discover_dataset(data_dir, split_options)
    images = _hash_all(_images(split), options.workers)
    readable = [i for i in images if not i.error]
    counts = {
        name: {cls: sum(1 for i in readable if i.split == name and i.label == k) for k, cls in enumerate(split.classes)}
        for name in SPLITS
        if any(i.split == name for i in images)
    }
    train_counts = [n for n in counts.get("train", {}).values() if n]
    imbalance = max(train_counts) / min(train_counts) if train_counts else 0.0
    pairs = find_duplicates(images, options.near_bits, options.near_mad)
    leaks = [p for p in pairs if p.crosses]
    leak_counts: dict[str, int] = {}
    for p in leaks:
        key = _pair_key(p.split_a, p.split_b)
        leak_counts[key] = leak_counts.get(key, 0) + 1
    unreadable = [{"path": s.path, "reason": s.reason} for s in split.skipped]
    unreadable += [{"path": i.path, "reason": i.error} for i in images if i.error]
    report = CheckReport(
        root=str(split.root),
        layout=split.layout,
        classes=list(split.classes),
        counts=counts,
        imbalance=float(imbalance),
        unreadable=unreadable,
        sizes={
            "width": _stats([i.width for i in readable]),
            "height": _stats([i.height for i in readable]),
            "aspect": _stats([i.width / i.height for i in readable if i.height]),
        },
        near_bits=options.near_bits,
        near_mad=options.near_mad,
        duplicates=[p for p in pairs if not p.crosses],
        leaks=leaks,
        leak_counts=leak_counts,
        warnings=[],
    )
    _group_findings(report, split, split_options, images)
    report.warnings = _warnings(report)
    return report


def _group_findings(report: CheckReport, split: DatasetSplit, options: SplitOptions, images: list[_Image]) -> None:
    """With groups given: how many, and which span two splits (a test/ folder made by hand can hold them)."""
    everything = [LabelledFile(i.path, i.label) for i in images]
    groups = file_groups(Path(split.root), everything, options)
    if groups is None:
        return
    sides: dict[str, set[str]] = {}
    for image in images:
        sides.setdefault(groups[image.path], set()).add(image.split)
    report.groups = len(sides)
    order = {name: k for k, name in enumerate(SPLITS)}
    report.groups_spanning = [
        {"group": g, "splits": sorted(s, key=order.__getitem__)} for g, s in sorted(sides.items()) if len(s) > 1
    ]


def _warnings(report: CheckReport) -> list[str]:
    out = []
    for key, n in sorted(report.leak_counts.items()):
        first, second = key.split("-")
        out.append(
            f"{n} image pair(s) appear in both {first} and {second}: the {second} figure is inflated "
            "(see 'leaks'; move or remove them, or group related images so that a group stays on one side)"
        )
    if report.groups_spanning:
        out.append(
            f"{len(report.groups_spanning)} of {report.groups} groups span two splits (see 'groups_spanning'): "
            "a folder split by hand puts them there; carved splits keep each group whole"
        )
    if report.duplicates:
        out.append(
            f"{len(report.duplicates)} duplicate pair(s) within a split: they weigh twice in training or scoring"
        )
    if report.imbalance >= 3:
        out.append(f"the classes are imbalanced ({report.imbalance:.1f}:1 in train): see --class-weight")
    if report.unreadable:
        out.append(f"{len(report.unreadable)} file(s) cannot be read and will be skipped")
    return out


def write_report(report: CheckReport, out_dir: str | os.PathLike[str]) -> Path:
    """check_report.json into `out_dir`; returns its path."""
    path = Path(out_dir) / "check_report.json"
    write_json_atomic(path, report.to_json())
    return path


def write_samples(data_dir: str | os.PathLike[str], split_options: SplitOptions, path: Path, per_class: int) -> None:
    """samples.png: the first `per_class` training images of each class, one row per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = discover_dataset(data_dir, split_options)
    rows = len(split.classes)
    fig, axes = plt.subplots(rows, per_class, figsize=(1.3 * per_class, 1.4 * rows), squeeze=False)
    for k, cls in enumerate(split.classes):
        files = [f.path for f in split.train if f.label == k][:per_class]
        for j in range(per_class):
            ax = axes[k][j]
            ax.axis("off")
            if j < len(files):
                try:
                    ax.imshow(load_rgb(files[j]))
                except DatasetError:
                    continue
        axes[k][0].set_title(cls, loc="left", fontsize=9)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
