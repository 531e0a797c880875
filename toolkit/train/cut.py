"""Fine-tuning on cached features: the frozen blocks below `--fine-tune-from` run once per stored view.

The cut is the last frozen layer (`block4_pool` when fine-tuning block5). Its output
is stored for validation (float32) and for every training view; each fine-tuning
epoch then costs only the unfrozen blocks' forward and backward passes.

When the run fine-tunes and its training features are fixed (`--aug-views K`, or no
augmentation), the frozen phase's features come from the same stores: the base
above the cut maps the stored cut features to the head's input, so blocks 1-4 run
once per image and view for both phases instead of twice.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from toolkit.data import LoadedDataset
from toolkit.train.features import (
    FeatureSource,
    compile_forward,
    extract_features,
    extract_into,
    feature_views_dataset,
    map_features,
    open_feature_store,
    plain_feature_dataset,
    training_features,
)
from toolkit.train.fit import FitContext


@dataclasses.dataclass
class CutStores:
    """The cut's features: training views (K, N, ...) in float16 and validation (N, ...) in float32."""

    views: np.ndarray
    val: np.ndarray


def shares_cut_features(ctx: FitContext, augmenter) -> bool:
    """Whether the frozen phase can take its features from the fine-tuning stores (fixed views, one worker)."""
    c = ctx.config
    fixed = augmenter is None or c.data.aug_views > 0
    return c.base.cache_features and c.fine_tune.epochs > 0 and fixed and c.strategy != "multiworker"


def cut_folder(ctx: FitContext, features_dir: Path) -> Path:
    return features_dir / f"finetune-{ctx.config.fine_tune.cut}"


def _cut_validation(ctx: FitContext, data: LoadedDataset, folder: Path):
    """(the float32 extractor up to the cut, its validation features): epochs are judged on exact features."""
    from toolkit.model import build_feature_extractor, fine_tune_cut

    cut = fine_tune_cut(ctx.model, ctx.config.fine_tune.cut)
    exact = build_feature_extractor(ctx.model, "fp32", until=cut)
    path = folder / "features-val.npy"
    return exact, extract_features(
        exact, data.val.images, path, ctx.config.optim.batch_size, np.float32, f"validation {cut}"
    )


def cut_stores(ctx: FitContext, data: LoadedDataset, augmenter, precision: str, folder: Path) -> CutStores:
    """Compute the cut's features once per process (validation in float32, training views in `precision`)."""
    from toolkit.model import build_feature_extractor, fine_tune_cut

    if "cut" in ctx.stores:
        return ctx.stores["cut"]
    c = ctx.config
    cut = fine_tune_cut(ctx.model, c.fine_tune.cut)
    exact, val = _cut_validation(ctx, data, folder)
    extractor = build_feature_extractor(ctx.model, precision, until=cut)
    views_count = c.data.aug_views if augmenter is not None else 1
    path = folder / "features-train-views.npy"
    views = open_feature_store(path, (views_count, len(data.train), *exact.output.shape[1:]), np.float16)
    forward = compile_forward(extractor, augmenter)
    for view in range(views_count):
        extract_into(
            forward, data.train.images, views[view], c.optim.batch_size, f"{cut}, view {view + 1}/{views_count}"
        )
    views.flush()
    stores = CutStores(np.load(path, mmap_mode="r", allow_pickle=False), val)
    ctx.stores["cut"] = stores
    return stores


def frozen_features_from_cut(ctx: FitContext, data: LoadedDataset, stores: CutStores, folder: Path):
    """(training dataset, validation features, training views) of the head's input, mapped from the cut's stores."""
    from toolkit.model import build_middle_model

    c, num_classes = ctx.config, len(data.classes)
    middle = build_middle_model(ctx.model, c.fine_tune.cut)
    shape = tuple(middle.output.shape[1:])
    val = open_feature_store(folder / "features-val-head.npy", (len(stores.val), *shape), np.float32)
    map_features(middle, stores.val, val, c.optim.batch_size, "validation features (from the cut)")
    views = open_feature_store(
        folder / "features-train-head.npy", (len(stores.views), len(data.train), *shape), np.float16
    )
    for view in range(len(stores.views)):
        map_features(middle, stores.views[view], views[view], c.optim.batch_size, f"training features, view {view + 1}")
    train_ds = feature_views_dataset(views, data.train.labels, num_classes, c.optim.batch_size, c.optim.seed)
    return train_ds, val, views


def cached_finetune_data(ctx: FitContext, data: LoadedDataset, augmenter, precision: str, features_dir: Path):
    """(the trainable upper model, training and validation datasets, callbacks) on the cut's features."""
    from toolkit.model import build_feature_extractor, build_upper_model, fine_tune_cut

    c, num_classes = ctx.config, len(data.classes)
    folder = cut_folder(ctx, features_dir)
    if shares_cut_features(ctx, augmenter):
        stores = cut_stores(ctx, data, augmenter, precision, folder)
        train_ds = feature_views_dataset(
            stores.views, data.train.labels, num_classes, c.optim.batch_size, c.optim.seed + 1
        )
        val_feats, callbacks = stores.val, []
    else:  # fresh augmented cut features before every epoch, or the multi-worker loop's own views
        exact, val_feats = _cut_validation(ctx, data, folder)
        shape = tuple(exact.output.shape[1:])
        source = FeatureSource(data.train, num_classes, c.optim.batch_size, c.optim.seed + 1, shape, folder)
        extractor = build_feature_extractor(ctx.model, precision, until=fine_tune_cut(ctx.model, c.fine_tune.cut))
        train_ds, callbacks, _ = training_features(
            extractor, source, augmenter, c.data.aug_views, c.strategy != "multiworker"
        )
    val_ds = plain_feature_dataset(val_feats, data.val.labels, num_classes, c.optim.batch_size)
    with ctx.strategy.scope():
        upper = build_upper_model(ctx.model, c.fine_tune.cut)
    return upper, train_ds, val_ds, callbacks
