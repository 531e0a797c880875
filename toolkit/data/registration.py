"""Whether geometric augmentation suits a data set: registered images are left unwarped by default.

Random rotation, shift and zoom teach a head that a finding may appear anywhere, at any angle:
right for photographs and lesions, wrong for registered images, where a pixel means the same
place in every picture (solar cells cut to their busbars, aligned documents, a fixed camera over
a conveyor). Warping those misaligns the very structure the classes differ in: on ELPV the
toolkit's augmentation cost 3-6 points of test accuracy, and helped the demo lesions by 2-3
(benchmarks/HEADS.md, over seeds on features extracted once).

The measure is how much of the training images' pixel variance their mean image explains, each
image first reduced to a 32 x 32 grey thumbnail and standardised (brightness and contrast are not
placement): about 0 when content sits anywhere, 1 when every image is the same picture. Measured
(2026-12-07): the demo lesions 0.21 (centred-ish lesions, vignetting), the ELPV cells 0.54.
`toolkit train` without `--augment`/`--no-augment` augments when the score is below `REGISTERED`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

THUMB = 32
REGISTERED = 0.4  # between the demo's 0.21 and ELPV's 0.54 (module docstring)
SAMPLE = 512  # images scored at most (evenly spaced): the score settles well before
MIN_IMAGES = 8  # fewer: no score, augmentation stays on


@dataclasses.dataclass(frozen=True)
class AugmentChoice:
    """The augmentation a run trains with, and why: recorded in run.json, said in one log line."""

    used: bool
    rule: str  # "--augment", "--no-augment", "--aug-views" or "auto"
    registration: float | None  # the score (None when the user chose, or too few images)

    def describe(self) -> str:
        if self.rule != "auto":
            return f"augmentation: {'on' if self.used else 'off'} ({self.rule})"
        score = "" if self.registration is None else f"; the mean image explains {self.registration:.0%} of variance"
        why = "registered images" if not self.used else "content not registered"
        return f"augmentation: {'on' if self.used else 'off'} (auto: {why}{score}; --augment/--no-augment choose)"

    def to_json(self) -> dict:
        return {"used": self.used, "rule": self.rule, "registration": self.registration, "threshold": REGISTERED}


def thumbnails(images: np.ndarray) -> np.ndarray:
    """N x 32 x 32 grey thumbnails (area means), each standardised to mean 0 and variance 1."""
    n, h, w = images.shape[:3]
    bh, bw = max(1, h // THUMB), max(1, w // THUMB)
    rows, cols = min(THUMB, h), min(THUMB, w)
    grey = np.asarray(images[:, : rows * bh, : cols * bw], np.float32).mean(axis=-1)
    small = grey.reshape(n, rows, bh, cols, bw).mean(axis=(2, 4))
    centred = small - small.mean(axis=(1, 2), keepdims=True)
    return centred / (centred.std(axis=(1, 2), keepdims=True) + 1e-6)


def registration_score(images: np.ndarray) -> float | None:
    """The share of the thumbnails' variance that their mean image explains (0..1); None under MIN_IMAGES."""
    if len(images) < MIN_IMAGES:
        return None
    picked = np.linspace(0, len(images) - 1, min(SAMPLE, len(images))).astype(int)
    thumbs = thumbnails(images[np.unique(picked)])
    mean = thumbs.mean(axis=0)
    return float(np.mean(mean**2) / max(float(np.mean(thumbs**2)), 1e-12))


def choose_augmentation(setting: bool | None, aug_views: int, train_images: np.ndarray) -> AugmentChoice:
    """The user's --augment/--no-augment; --aug-views asks for augmented views; else by registration."""
    if setting is not None:
        return AugmentChoice(setting, "--augment" if setting else "--no-augment", None)
    if aug_views:
        return AugmentChoice(True, "--aug-views", None)
    score = registration_score(train_images)
    return AugmentChoice(score is None or score < REGISTERED, "auto", score)
