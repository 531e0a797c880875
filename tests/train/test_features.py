from __future__ import annotations

import csv

import numpy as np
import pytest

from tests.conftest import IMAGE_SIZE, train_config
from toolkit.errors import TrainingError


def test_aug_views_precompute_k_views(demo_dir, tmp_path):
    from toolkit.train import train

    out = tmp_path / "views"
    train(train_config(demo_dir, out, epochs=2, augment=True, aug_views=2), log=lambda _m: None, verbose=0)
    views = np.load(out / "cache" / "features-train-views.npy", mmap_mode="r")
    assert views.shape[:2] == (2, 18)
    assert not np.array_equal(views[0], views[1])  # two different augmentations


def test_plain_augmented_mode_refreshes_features_before_every_epoch_reads_them(demo_dir, tmp_path, monkeypatch):
    """Every batch of epoch e is read after epoch e's own refresh, never prefetched from e-1."""
    from toolkit.train import features as features_module
    from toolkit.train import train

    events: list[tuple[str, int | None]] = []
    snapshots: list[np.ndarray] = []
    real_refresh, real_gather = features_module.EpochFeatures.refresh, features_module.EpochFeatures.gather

    def refresh(self, epoch):
        real_refresh(self, epoch)
        events.append(("refresh", epoch))
        snapshots.append(np.array(self.store, dtype=np.float32))

    def gather(self, idx):
        events.append(("read", self.epoch))
        return real_gather(self, idx)

    monkeypatch.setattr(features_module.EpochFeatures, "refresh", refresh)
    monkeypatch.setattr(features_module.EpochFeatures, "gather", gather)
    out = tmp_path / "plain"
    train(train_config(demo_dir, out, epochs=3, augment=True, aug_views=0), log=lambda _m: None, verbose=0)
    events = [e for e in events if e != ("read", None)]  # a model-building read before training, if any
    # 18 training images in batches of 8: three reads per epoch, all after that epoch's refresh.
    assert events == [step for e in range(3) for step in [("refresh", e), ("read", e), ("read", e), ("read", e)]]
    assert not np.array_equal(snapshots[0], snapshots[1])  # a fresh augmentation each epoch
    with open(out / "history.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3]


def test_plain_augmented_mode_refuses_batches_read_ahead_of_the_refresh(demo_dir, tmp_path):
    import tensorflow as tf

    from toolkit.data import SplitOptions, load_dataset
    from toolkit.train.features import EpochFeatures, FeatureSource

    arrays = load_dataset(str(demo_dir), IMAGE_SIZE, SplitOptions(val_split=0.25, seed=1), tmp_path / "cache").train
    forward = tf.function(lambda x: tf.reduce_mean(tf.cast(x, tf.float32), axis=(1, 2), keepdims=True))
    fresh = EpochFeatures(forward, FeatureSource(arrays, 2, 8, 1, (1, 1, 3), tmp_path), tmp_path / "f.npy")
    fresh.refresh(0)
    assert fresh.store.shape == (18, 1, 1, 3) and float(np.abs(fresh.store).max()) > 0
    for _ in range(fresh.batches_per_epoch):
        fresh.gather(np.arange(8))
    fresh.check_reads()  # one epoch's worth: fine
    fresh.gather(np.arange(8))  # a batch fetched ahead for the next epoch
    with pytest.raises(TrainingError, match="stale features"):
        fresh.refresh(1)
