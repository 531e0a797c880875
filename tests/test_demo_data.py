from __future__ import annotations

from toolkit.demo_data import DemoDataConfig, write_demo_dataset


def test_demo_data_is_deterministic_and_split(tmp_path):
    a = write_demo_dataset(tmp_path / "a", DemoDataConfig(per_class=4, size=32, seed=7))
    write_demo_dataset(tmp_path / "b", DemoDataConfig(per_class=4, size=32, seed=7))
    write_demo_dataset(tmp_path / "c", DemoDataConfig(per_class=4, size=32, seed=8))
    assert a == {"train": {"benign": 3, "malignant": 3}, "test": {"benign": 1, "malignant": 1}}
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert len(files) == 8
    same = [(tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files]
    different = [(tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files]
    assert all(same) and all(different)
