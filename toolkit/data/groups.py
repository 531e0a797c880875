"""Grouped splits: images of one group (a lesion, a solar module, a patient) never span two carved splits.

Groups come from a CSV (`--groups FILE.csv`: path,group) or from each path (`--group-pattern REGEX`);
the split keeps whole groups on each side with classes as even as whole groups allow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.errors import DatasetError


def grouped_split(files: list, share: float, seed: int, groups: dict[str, str]) -> tuple[list, list]:
    """Whole groups to one side, classes as even as whole groups allow: one fold of scikit-learn's
    StratifiedGroupKFold with 1/share folds (0.15: 7 folds, 14%)."""
    from sklearn.model_selection import StratifiedGroupKFold

    names = [groups[f.path] for f in files]
    folds = max(2, int(round(1.0 / share)))
    if len(set(names)) < folds:
        raise DatasetError(f"{len(set(names))} groups cannot be split {share:.0%} / {1 - share:.0%} by whole groups")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = [f.label for f in files]
    train_index, val_index = next(splitter.split(np.zeros(len(files)), labels, names))
    return [files[i] for i in sorted(train_index)], [files[i] for i in sorted(val_index)]


def path_groups(root: Path, paths: list[str], csv_file: str | None, pattern: str | None) -> dict[str, str] | None:
    """Each path's group from `--groups FILE.csv` (path,group; paths under DATA_DIR or absolute) or
    `--group-pattern REGEX` (its first group, else the whole match, searched in the path under DATA_DIR)."""
    if csv_file is None and pattern is None:
        return None
    if csv_file is not None and pattern is not None:
        raise DatasetError("--groups and --group-pattern: give one of them")
    relative = {p: Path(p).relative_to(root).as_posix() for p in paths}
    if pattern is not None:
        return _pattern_groups(relative, pattern)
    return _csv_groups(root, relative, Path(csv_file))


def _pattern_groups(relative: dict[str, str], pattern: str) -> dict[str, str]:
    import re

    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DatasetError(f"--group-pattern {pattern!r} is not a regular expression: {exc}") from None
    out = {}
    for path, rel in relative.items():
        found = regex.search(rel)
        if found is None:
            raise DatasetError(f"--group-pattern {pattern!r} does not match {rel}: every image needs a group")
        out[path] = found.group(1) if regex.groups else found.group(0)
    return out


def _csv_groups(root: Path, relative: dict[str, str], csv_path: Path) -> dict[str, str]:
    import csv

    if not csv_path.is_file():
        raise DatasetError(f"--groups file not found: {csv_path}")
    table: dict[str, str] = {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if len(row) < 2 or row[0].strip().lower() == "path":
                continue
            given = Path(row[0].strip())
            key = given.resolve().relative_to(root.resolve()).as_posix() if given.is_absolute() else given.as_posix()
            table[key] = row[1].strip()
    missing = [rel for rel in relative.values() if rel not in table]
    if missing:
        raise DatasetError(f"--groups {csv_path}: no group for {len(missing)} image(s), e.g. {missing[0]}")
    return {path: table[rel] for path, rel in relative.items()}
