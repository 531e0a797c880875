from __future__ import annotations

from toolkit.data.demo import DemoDataConfig, write_demo_dataset


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


def test_rewriting_with_another_test_fraction_leaves_no_image_in_both_splits(tmp_path):
    write_demo_dataset(tmp_path, DemoDataConfig(per_class=8, size=32, test_fraction=0.25))
    (tmp_path / "train" / "benign" / "mine.jpg").write_bytes(b"a user's own file")
    write_demo_dataset(tmp_path, DemoDataConfig(per_class=8, size=32, test_fraction=0.5))
    names = {split: {p.name for p in (tmp_path / split).rglob("*.jpg")} for split in ("train", "test")}
    assert not names["train"] & names["test"]
    assert len(names["test"]) == 8 and "mine.jpg" in names["train"]


def test_the_classes_overlap_in_atypia_so_the_demo_is_not_saturated():
    """Some benign lesions draw a higher atypia score than some malignant ones."""
    import numpy as np

    from toolkit.data.demo import ATYPIA_BETA

    rng = np.random.default_rng(0)
    benign, malignant = rng.beta(*ATYPIA_BETA["benign"], 4000), rng.beta(*ATYPIA_BETA["malignant"], 4000)
    bayes_error = ((benign > 0.5).mean() + (malignant < 0.5).mean()) / 2
    assert 0.005 < bayes_error < 0.1
