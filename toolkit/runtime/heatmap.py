"""Heatmaps from a heatmap artifact's second output, without TensorFlow: pick, scale, compare.

A heatmap artifact (`toolkit export RUN --heatmap`) returns, beside the probabilities, one Grad-CAM
map per label on the base's feature grid (N x h x w x K, `toolkit.heatmap_model`). What an app does
with it is here, in numpy and Pillow: take the map of the label it reports, scale it to 0..1 by its
own maximum, resize it to the picture (bilinear, as the browser bundle does), and find its peak.
`agreement` is the export gate's comparison of an artifact's maps with the Keras model's.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def class_maps(raw: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """N x h x w: each image's map of the class it reports, from the N x h x w x K output."""
    raw = np.asarray(raw, np.float32)
    return raw[np.arange(len(raw)), :, :, np.asarray(classes, np.int64)]


def normalized(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its own maximum (0..1); an all-zero map (no positive evidence) stays zero."""
    maps = np.maximum(np.asarray(maps, np.float32), 0.0)
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1) if len(maps) else np.zeros((0, 1, 1))
    return np.where(peak > 0, maps / np.maximum(peak, np.float32(1e-30)), 0.0).astype(np.float32)


def to_image(grid_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One h x w map resized to `size` (height, width) bilinearly and scaled to 0..1."""
    from PIL import Image

    height, width = size
    resized = np.asarray(
        Image.fromarray(np.asarray(grid_map, np.float32), mode="F").resize((width, height), Image.BILINEAR)
    )
    return normalized(resized[None])[0]


def peak_of(heatmap: np.ndarray) -> tuple[float, float]:
    """The map's maximum as (x, y) fractions of width and height (pixel centres).

    A maximum in an edge cell of the grid becomes a plateau when resized (bilinear interpolation holds
    the edge value out to the border): the plateau's centre is the peak, not its first pixel.
    """
    top = heatmap.max()
    ys, xs = np.nonzero(heatmap >= top - 1e-6 * max(float(top), 1e-30))
    return ((xs.mean() + 0.5) / heatmap.shape[1], (ys.mean() + 0.5) / heatmap.shape[0])


@dataclasses.dataclass
class MapAgreement:
    """How far an artifact's maps are from the reference's, both scaled to their own maximum."""

    images: int
    mean_max_diff: float  # mean over images of the largest per-cell difference
    p95_max_diff: float  # what the gate bounds
    worst_max_diff: float
    same_peak: float  # fraction of images whose maximum is in the same grid cell
    bound: float
    passed: bool

    def failure(self) -> str | None:
        if self.passed:
            return None
        return f"heatmap p95 max |diff| {self.p95_max_diff:.3f} > {self.bound:g} (maps scaled to their peak)"


def agreement(reference: np.ndarray, candidate: np.ndarray, bound: float) -> MapAgreement:
    """Compare N x h x w maps (each image's reported class) of the reference and an artifact."""
    if reference.shape != candidate.shape or not len(reference):
        return MapAgreement(len(reference), float("inf"), float("inf"), float("inf"), 0.0, bound, False)
    finite = bool(np.isfinite(candidate).all())  # before scaling, which would hide a NaN map as an empty one
    ref, cand = normalized(reference), normalized(candidate)
    diffs = np.abs(ref - cand).reshape(len(ref), -1).max(axis=1) if finite else np.full(len(ref), np.inf)
    flat_ref, flat_cand = ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)
    same = float((flat_ref.argmax(axis=1) == flat_cand.argmax(axis=1)).mean())
    p95 = float(np.percentile(diffs, 95)) if finite else float("inf")
    return MapAgreement(
        len(ref), float(diffs.mean()), p95, float(diffs.max()), same, bound, bool(finite and p95 <= bound)
    )
