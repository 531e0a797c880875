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


def test_lesions_csv_says_where_every_lesion_is(tmp_path):
    """The sidecar names every image, and the lesion is where it says: darker inside than around it."""
    import numpy as np
    from PIL import Image

    from toolkit.data.demo import DemoDataConfig, read_lesions, write_demo_dataset

    write_demo_dataset(tmp_path, DemoDataConfig(per_class=20, size=96, seed=5))
    lesions = read_lesions(tmp_path)
    images = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg"))
    assert sorted(lesions) == images
    darker = 0
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    for path, lesion in lesions.items():
        grey = np.asarray(Image.open(tmp_path / path).convert("L"), np.float32)
        distance = np.hypot(xx - lesion.cx, yy - lesion.cy)
        inside = grey[distance < 0.4 * lesion.radius].mean()
        around = grey[(distance > 1.1 * lesion.radius) & (distance < 1.1 * lesion.radius + 0.1)].mean()
        darker += inside < around
    assert darker >= 0.9 * len(lesions), darker
