from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.data import SplitOptions, discover_dataset, load_dataset, load_split_images, write_data_report
from toolkit.errors import DatasetError


def _jpeg(path: Path, colour=(120, 80, 60), size=(24, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")


def _make_split(root: Path, classes=("a", "b"), val_name="val", per_class=3, extra=()) -> None:
    for split in ("train", val_name, *extra):
        for i, cls in enumerate(classes):
            for k in range(per_class):
                _jpeg(root / split / cls / f"{cls}{k}.jpg", colour=(40 * i + 20, 10 * k, 90))


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_validation_folder_selects_and_test_folder_is_held_out(tmp_path, val_name):
    _make_split(tmp_path, val_name=val_name, extra=("test",))
    split = discover_dataset(tmp_path)
    assert split.layout == "split-folders" and split.classes == ["a", "b"]
    assert len(split.train) == len(split.val) == len(split.test) == 6
    assert all(f"/{val_name}/" in f.path for f in split.val) and all("/test/" in f.path for f in split.test)
    assert split.val_source == f"{val_name}/"


def test_tutorial_layout_carves_validation_from_train_and_keeps_test_held_out(tmp_path):
    _make_split(tmp_path, val_name="test", per_class=8)
    split = discover_dataset(tmp_path, SplitOptions(val_split=0.25, seed=3))
    assert len(split.train) == 12 and len(split.val) == 4 and len(split.test) == 16
    assert all("/train/" in f.path for f in split.train + split.val)
    assert not {f.path for f in split.train} & {f.path for f in split.val}
    assert [f.label for f in split.val].count(0) == 2  # stratified
    tutorial = discover_dataset(tmp_path, SplitOptions(validate_on_test=True))
    assert len(tutorial.train) == 16 and len(tutorial.val) == 16 and tutorial.test == []
    assert all("/test/" in f.path for f in tutorial.val) and "validate-on-test" in tutorial.val_source


def test_flat_layout_carves_test_and_validation(tmp_path):
    for cls in ("x", "y"):
        for k in range(20):
            _jpeg(tmp_path / cls / f"{k}.JPG")
    split = discover_dataset(tmp_path, SplitOptions(val_split=0.2, test_split=0.2, seed=1))
    assert (len(split.train), len(split.val), len(split.test)) == (24, 8, 8)
    paths = [{f.path for f in part} for part in (split.train, split.val, split.test)]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])


def test_flat_layout_is_split_stratified_and_seeded(tmp_path):
    for cls in ("x", "y"):
        for k in range(10):
            _jpeg(tmp_path / cls / f"{k}.JPG")
    one = discover_dataset(tmp_path, SplitOptions(val_split=0.2, test_split=0.0, seed=5))
    two = discover_dataset(tmp_path, SplitOptions(val_split=0.2, test_split=0.0, seed=5))
    other = discover_dataset(tmp_path, SplitOptions(val_split=0.2, test_split=0.0, seed=6))
    assert one.layout == "flat"
    assert [f.label for f in one.val].count(0) == 2 and [f.label for f in one.val].count(1) == 2
    assert [f.path for f in one.val] == [f.path for f in two.val]
    assert [f.path for f in one.val] != [f.path for f in other.val]


def test_junk_files_are_skipped_with_reasons_and_counts_add_up(tmp_path):
    _make_split(tmp_path)
    cls = tmp_path / "train" / "a"
    (cls / ".DS_Store").write_bytes(b"\0\0")
    (cls / "Thumbs.db").write_bytes(b"\0")
    (cls / "._a0.jpg").write_bytes(b"apple double")
    (cls / "README.md").write_text("notes")
    (cls / "empty.jpg").write_bytes(b"")
    (cls / "text.jpg").write_text("not really a jpeg")
    good = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(good, "JPEG")
    (cls / "truncated.jpg").write_bytes(good.getvalue()[:100])
    data = load_dataset(tmp_path, 16)
    train, report = data.train, data.report
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert set(reasons) == {".DS_Store", "Thumbs.db", "._a0.jpg", "README.md", "empty.jpg", "text.jpg", "truncated.jpg"}
    assert reasons["empty.jpg"] == "empty file" and reasons[".DS_Store"] == "hidden file"
    assert report.used + len(report.skipped) == report.scanned == 19
    assert len(train) == 6 and train.images.shape == (6, 16, 16, 3)
    write_data_report(report, tmp_path / "report.json")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["skipped_count"] == 7 and saved["counts"]["train"] == {"a": 3, "b": 3}


def test_missing_folder_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        discover_dataset(tmp_path / "nope")


def test_fewer_than_two_classes_is_a_dataset_error(tmp_path):
    _make_split(tmp_path, classes=("only",))
    with pytest.raises(DatasetError, match="at least two class folders"):
        discover_dataset(tmp_path)


def test_class_names_must_match_between_train_and_validation(tmp_path):
    _make_split(tmp_path)
    (tmp_path / "val" / "b").rename(tmp_path / "val" / "c")
    with pytest.raises(DatasetError, match="differ"):
        discover_dataset(tmp_path)


def test_class_folder_without_readable_image_is_a_dataset_error(tmp_path):
    _make_split(tmp_path)
    for f in (tmp_path / "train" / "b").iterdir():
        f.write_text("broken")
    with pytest.raises(DatasetError, match="'train/b' has no readable image"):
        load_dataset(tmp_path, 16)


def test_decoded_cache_is_reused_and_rebuilt_when_an_image_changes(tmp_path):
    _make_split(tmp_path / "data")
    split = discover_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    first = load_split_images(split.train, (16, 16), cache)
    assert isinstance(first.images, np.memmap) or first.images.base is not None
    assert len(list(cache.glob("images-*.npy"))) == 1
    second = load_split_images(split.train, (16, 16), cache)
    np.testing.assert_array_equal(first.images, second.images)
    assert len(list(cache.glob("images-*.npy"))) == 1
    changed = Path(split.train[0].path)
    _jpeg(changed, colour=(250, 250, 250))
    os.utime(changed, (time.time() + 5, time.time() + 5))
    third = load_split_images(split.train, (16, 16), cache)
    assert len(list(cache.glob("images-*.npy"))) == 2
    assert third.images[0].mean() > 240 and first.images[0].mean() < 200


def test_parity_sample_is_stratified_seeded_and_complete_when_asked_for_all():
    from toolkit.data import stratified_sample

    labels = np.array([0] * 30 + [1] * 10)  # stored sorted by class, as splits are
    index = stratified_sample(labels, 8, seed=4)
    assert len(index) == 8 and list(labels[index]).count(0) == 6 and list(labels[index]).count(1) == 2
    assert np.array_equal(index, stratified_sample(labels, 8, seed=4))
    assert not np.array_equal(index, stratified_sample(labels, 8, seed=5))
    assert np.array_equal(stratified_sample(labels, None, seed=0), np.arange(40))


def _modules(root: Path, modules: int = 14, cells: int = 4) -> Path:
    """A flat folder of solar-cell-like files named m<module>_c<cell>.png, both classes in every module."""
    from PIL import Image

    for cls_index, cls in enumerate(("defective", "functional")):
        folder = root / cls
        folder.mkdir(parents=True)
        for m in range(modules):
            for c in range(cells):
                Image.new("RGB", (8, 8), (m * 9 % 256, c * 40, cls_index * 200)).save(folder / f"m{m:02d}_c{c}.png")
    return root


def _module_of(path: str) -> str:
    return Path(path).name.split("_")[0]


def test_a_grouped_split_keeps_every_module_on_one_side(tmp_path):
    from toolkit.data.folders import SplitOptions, discover_dataset

    data = _modules(tmp_path / "flat")
    grouped = discover_dataset(data, SplitOptions(val_split=0.2, test_split=0.2, group_pattern=r"(m\d+)_"))
    sides = [{_module_of(f.path) for f in files} for files in (grouped.train, grouped.val, grouped.test)]
    assert all(sides) and not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert "whole groups" in grouped.val_source
    assert {f.label for f in grouped.val} == {0, 1} and {f.label for f in grouped.test} == {0, 1}
    plain = discover_dataset(data, SplitOptions(val_split=0.2, test_split=0.2))  # per file: modules straddle
    plain_sides = [{_module_of(f.path) for f in files} for files in (plain.train, plain.val, plain.test)]
    assert plain_sides[0] & (plain_sides[1] | plain_sides[2])


def test_groups_from_a_csv_carve_validation_from_train_by_whole_groups(tmp_path):
    from toolkit.data.folders import SplitOptions, discover_dataset

    data = tmp_path / "split"
    _modules(data / "train")
    table = tmp_path / "groups.csv"
    rows = ["path,group"] + [
        f"train/{f.parent.name}/{f.name},{_module_of(f.name)}" for f in sorted((data / "train").rglob("*.png"))
    ]
    table.write_text("\n".join(rows) + "\n")
    split = discover_dataset(data, SplitOptions(val_split=0.25, groups=str(table)))
    train, val = ({_module_of(f.path) for f in files} for files in (split.train, split.val))
    assert val and not (train & val)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"group_pattern": r"(m\d+)_", "groups": "x.csv"}, "give one of them"),
        ({"group_pattern": r"zz(\d)"}, "does not match"),
        ({"group_pattern": "("}, "not a regular expression"),
        ({"groups": "/nonexistent/groups.csv"}, "not found"),
    ],
)
def test_group_options_that_cannot_work_are_one_line_errors(tmp_path, options, words):
    from toolkit.data.folders import SplitOptions, discover_dataset

    data = _modules(tmp_path / "flat")
    with pytest.raises(DatasetError, match=words):
        discover_dataset(data, SplitOptions(**options))


def test_the_check_names_groups_that_a_hand_made_test_folder_splits(tmp_path):
    from toolkit.data.check import check_dataset
    from toolkit.data.folders import SplitOptions

    data = tmp_path / "split"
    _modules(data / "train", modules=10)
    _modules(data / "test", modules=2)  # modules m00 and m01 again: by hand, on both sides
    report = check_dataset(data, SplitOptions(group_pattern=r"(m\d+)_"))
    spanning = {g["group"] for g in report.groups_spanning}
    assert {"m00", "m01"} <= spanning and report.groups == 10
    assert all("test" in g["splits"] for g in report.groups_spanning if g["group"] in ("m00", "m01"))
    assert any("span two splits" in w for w in report.warnings)
