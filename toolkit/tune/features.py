"""The search's feature stores: each base's top features and, when the search fine-tunes, every cut's, in one pass.

A trial trains on these stores, never on images: RUN/tune/features-<base>.npy (the base's output, what
the head reads) and RUN/tune/features-<base>-<cut>.npy (the output of the last frozen layer when
fine-tuning starts at that cut; tune/finetune.py trains the base above it). The stores a search lacks
come from one forward pass of the base with an output tapped at each of those layers, as train/cut.py
serves the top features from the cut's instead of a second pass. Finished stores are reused; each is
written to a temporary file and renamed, so a killed search never leaves half a store behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

FEATURES = "features-{base}.npy"  # one store per base searched
CUT_FEATURES = "features-{base}-{cut}.npy"
BATCH = 16


def store_paths(tune_dir: Path, base: str, cuts: bool) -> dict[str | None, Path]:
    """None: the top features' store; each cut's name: its store (only when the search fine-tunes)."""
    from toolkit.bases import get_base

    paths: dict[str | None, Path] = {None: tune_dir / FEATURES.format(base=base)}
    if cuts:
        paths |= {cut: tune_dir / CUT_FEATURES.format(base=base, cut=cut) for cut in get_base(base).cuts}
    return paths


def _complete(path: Path, count: int) -> bool:
    return path.is_file() and np.load(path, mmap_mode="r").shape[0] == count


def cache_base_features(classifier: Callable[[], object], images: Callable[[], np.ndarray], count: int,
                        paths: dict[str | None, Path], base: str) -> dict[str | None, np.ndarray]:  # fmt: skip
    """The `count` non-test images' features at each store of `paths` (float16), the missing ones from one pass.

    `classifier` and `images` are called only when a store has to be made.
    """
    from toolkit.fileio import atomic_path
    from toolkit.model import build_tap_extractor, fine_tune_cut
    from toolkit.progress import phase
    from toolkit.train.features import compile_forward, open_feature_store

    missing = [key for key, path in paths.items() if not _complete(path, count)]
    if missing:
        model = classifier()
        extractor = build_tap_extractor(model, [None if key is None else fine_tune_cut(model, key) for key in missing])
        forward, batch_images = compile_forward(extractor), images()
        with contextlib.ExitStack() as stack:
            temps = [stack.enter_context(atomic_path(paths[key])) for key in missing]
            stores = [open_feature_store(tmp, (count, *out.shape[1:]), np.float16)
                      for tmp, out in zip(temps, extractor.outputs)]  # fmt: skip
            names = ", ".join("top" if key is None else key for key in missing)
            with phase(f"{base} features ({names})", count) as advance:
                for start in range(0, count, BATCH):
                    batch = np.asarray(batch_images[start : start + BATCH], dtype=np.uint8)
                    for store, out in zip(stores, forward(batch)):
                        store[start : start + len(batch)] = out.numpy().astype(np.float16, copy=False)
                    advance(len(batch))
            for store in stores:
                store.flush()
            del stores
    return {key: np.load(path, mmap_mode="r", allow_pickle=False) for key, path in paths.items()}
