"""The head study behind the defaults (benchmarks/HEADS.md): head variants and best-epoch rules on cached features.

A full `toolkit train` run costs 6-60 minutes here, and one run's test accuracy moves by several
points with its seed; this study extracts the frozen VGG16 features once (clean training images,
K augmented views, validation, test: `extract`) and then trains many small heads on them in seconds
(`heads`), over seeds, scoring every epoch on test so that each best-epoch rule can be compared:
last epoch, best val_accuracy, best val_loss, val_loss smoothed over 3 epochs, best val_accuracy
with ties to the lower val_loss. The heads are the toolkit's own (`model.build_head`, feature_norm as `train` sets it).

Usage: python benchmarks/head_study.py extract DATA_DIR OUT [--views 3] [--weights FILE]
       python benchmarks/head_study.py heads OUT [CONFIG ...] [--task binary|grades] [--seeds 2] [--clean]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

CONFIGS = {
    "before": dict(kind="gap+gmp", norm=False),
    "norm": dict(),
    "norm+cw": dict(cw=1.0),
    "norm+sqrtcw": dict(cw=0.5),
    "norm 10ep cos": dict(sched="cos"),
    "norm 20ep cos": dict(sched="cos", epochs=20),
    "flatten": dict(kind="flatten", norm=False),
    "flatten+norm": dict(kind="flatten"),
    "mlp": dict(kind="mlp"),
    "mlp d0.5": dict(kind="mlp", dropout=0.5),
    "mlp+cw": dict(kind="mlp", cw=1.0),
    "mlp d0.5+cw": dict(kind="mlp", dropout=0.5, cw=1.0),
    "mlp+cw 20ep": dict(kind="mlp", cw=1.0, epochs=20),
}


def extract(data_dir: str, out: Path, views: int, weights: str = "imagenet") -> None:
    from toolkit.data import SplitOptions, load_dataset
    from toolkit.data.augment import RandomAffine
    from toolkit.model import build_classifier, features_part
    from toolkit.train.features import compile_forward, extract_into
    from toolkit.weights import WeightsRequest

    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(data_dir, 224, SplitOptions(), out / "cache")
    model, _ = build_classifier(len(data.classes), 224, WeightsRequest(weights), "gap+gmp", 0.3)
    features = features_part(model)
    shape = tuple(features.output.shape[1:])
    plain, augmented = compile_forward(features), compile_forward(features, RandomAffine(0))
    for name, arrays in (("val", data.val), ("test", data.test), ("train", data.train)):
        store = np.zeros((len(arrays.labels), *shape), np.float16)
        extract_into(plain, arrays.images, store, 32, name)
        np.save(out / f"{name}.npy", store)
        np.save(out / f"{name}_y.npy", arrays.labels)
    store = np.zeros((views, len(data.train.labels), *shape), np.float16)
    for view in range(views):
        extract_into(augmented, data.train.images, store[view], 32, f"view {view + 1}")
    np.save(out / "train_views.npy", store)


def _head(shape, k, kind, norm, dropout, stats):
    """The toolkit's own head (`model.build_head`), standardised on every stored view as training does."""
    from toolkit.model import build_head, pre_norm, set_feature_statistics
    from toolkit.train.features import feature_statistics

    head = build_head(shape, k, kind, dropout, normalize=norm)
    if norm:
        set_feature_statistics(head, *feature_statistics(pre_norm(head), stats, 256))
    return head


def _curve(keras, data, seed, kind="gap+gmp", norm=True, epochs=10, lr=1e-3, sched=None, cw=0.0, dropout=0.3):
    """Per epoch: (epoch, loss, val_loss, val_accuracy, test accuracy, test balanced accuracy, smallest recall)."""
    views, ytr, xv, yv, xt, yt = data
    k = int(ytr.max()) + 1
    keras.utils.set_random_seed(seed)
    model = _head(tuple(xv.shape[1:]), k, kind, norm, dropout, list(views))
    rate = keras.optimizers.schedules.CosineDecay(lr, int(np.ceil(len(ytr) / 32)) * epochs) if sched else lr
    model.compile(keras.optimizers.Adam(rate), "categorical_crossentropy", metrics=["accuracy"])
    counts = np.bincount(ytr, minlength=k)
    weights = {i: (len(ytr) / (k * c)) ** cw for i, c in enumerate(counts)} if cw else None
    rng, rows, adjusted = np.random.default_rng(seed), [], {tau: [] for tau in TAUS}
    for epoch in range(epochs):
        x = views[rng.integers(0, len(views)), np.arange(len(ytr))]  # one stored view per image and epoch
        logs = model.fit(x, np.eye(k)[ytr], batch_size=32, epochs=1, verbose=0,
                         validation_data=(xv, np.eye(k)[yv]), class_weight=weights).history  # fmt: skip
        probs = model.predict(xt, verbose=0, batch_size=256)
        rows.append((epoch + 1, logs["loss"][0], logs["val_loss"][0], logs["val_accuracy"][0],
                     *_scores(probs.argmax(1), yt, k)))  # fmt: skip
        for tau in TAUS:  # post-hoc logit adjustment by the training prior (Menon et al. 2021)
            adjusted[tau].append(
                _scores((np.log(probs + 1e-12) - tau * np.log(counts / counts.sum())).argmax(1), yt, k)
            )
    return np.array(rows), {tau: np.array(v) for tau, v in adjusted.items()}


TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _scores(pred: np.ndarray, y: np.ndarray, k: int) -> tuple[float, float, float]:
    """(accuracy, balanced accuracy, smallest per-class recall)."""
    recalls = [(pred[y == c] == c).mean() for c in range(k)]
    return (pred == y).mean(), float(np.mean(recalls)), min(recalls)


def _rules(r: np.ndarray) -> dict[str, int]:
    val_loss = r[:, 2]
    smooth = np.convolve(np.r_[val_loss[:1], val_loss, val_loss[-1:]], np.ones(3) / 3, "valid")
    return {
        "last": len(r) - 1,
        "val_acc": int(np.argmax(r[:, 3])),
        "val_loss": int(np.argmin(val_loss)),
        "smooth3 loss": int(np.argmin(smooth)),
        "acc, ties by loss": max(range(len(r)), key=lambda i: (r[i, 3], -r[i, 2])),
    }


def heads(out: Path, task: str, seeds: int, clean: bool, names: list[str]) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    def labels(name):  # grades folders sort defect_0, defect_1, defect_1of3, defect_2of3; >= 0.5 is defective
        y = np.load(out / f"{name}_y.npy")
        return np.isin(y, [1, 3]).astype(int) if task == "binary" and y.max() > 1 else y

    views = np.load(out / ("train.npy" if clean else "train_views.npy")).astype(np.float32)
    views = views[None] if clean else views
    load = lambda name: np.load(out / f"{name}.npy").astype(np.float32)  # noqa: E731
    data = (views, labels("train"), load("val"), labels("val"), load("test"), labels("test"))
    for name in names or list(CONFIGS):
        chosen: dict[str, list] = {}
        for seed in range(seeds):
            r, adjusted = _curve(keras, data, seed, **CONFIGS[name])
            for rule, i in _rules(r).items():
                chosen.setdefault(rule, []).append(r[i])
                for tau, a in adjusted.items():
                    chosen.setdefault(f"{rule} tau {tau}", []).append(np.r_[r[i][:4], a[i]])
        cells = [
            f"{rule:24s}: test {np.mean([x[4] for x in v]):.3f} bal {np.mean([x[5] for x in v]):.3f} "
            f"min recall {np.mean([x[6] for x in v]):.2f} val {np.mean([x[3] for x in v]):.3f}"
            for rule, v in chosen.items()
        ]
        for cell in cells:
            print(f"{task} {name:14s} | {cell}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("extract")
    e.add_argument("data_dir")
    e.add_argument("out", type=Path)
    e.add_argument("--views", type=int, default=3)
    e.add_argument("--weights", default="imagenet", help="imagenet (the resolver) or a weights file")
    h = sub.add_parser("heads")
    h.add_argument("out", type=Path)
    h.add_argument("--task", choices=("binary", "grades"), default="binary")
    h.add_argument("--seeds", type=int, default=2)
    h.add_argument("--clean", action="store_true", help="train on the clean images' features (no augmentation)")
    h.add_argument("configs", nargs="*", help=f"any of: {', '.join(CONFIGS)} (default: all)")
    args = parser.parse_args()
    if args.command == "extract":
        extract(args.data_dir, args.out, args.views, args.weights)
    else:
        heads(args.out, args.task, args.seeds, args.clean, args.configs)


if __name__ == "__main__":
    main()
