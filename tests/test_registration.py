"""Registered images (a pixel means the same place in every picture) are told from content placed anywhere."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.data.registration import REGISTERED, choose_augmentation, registration_score


def registered(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """One layout (a grid of bars, like a solar cell's busbars) in every image, under noise and brightness."""
    rng = np.random.default_rng(seed)
    layout = np.zeros((size, size), np.float32)
    layout[:, size // 4 :: size // 2] = 1.0
    layout[size // 3 :: size // 3, :] = 0.7
    gain = rng.uniform(0.6, 1.4, (n, 1, 1))
    images = 60 + 120 * gain * layout + rng.normal(0, 25, (n, size, size))
    return np.repeat(np.clip(images, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def placed_anywhere(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """A bright disc at a random place on a noisy background: the lesions' case."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(90, 20, (n, size, size))
    for image in images:
        cy, cx, r = rng.uniform(8, size - 8), rng.uniform(8, size - 8), rng.uniform(4, 10)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] += 120
    return np.repeat(np.clip(images, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def test_registered_images_score_high_and_content_placed_anywhere_low():
    high, low = registration_score(registered(60)), registration_score(placed_anywhere(60))
    assert high > REGISTERED > low
    assert high > 0.5 and low < 0.1


def test_the_score_ignores_each_images_brightness_and_contrast():
    images = registered(40)
    contrast = np.linspace(0.1, 1.0, len(images))[:, None, None, None]  # photometric, not placement
    varied = (images.astype(np.float32) * contrast + 100 * (1 - contrast)).astype(np.uint8)
    assert registration_score(varied) == pytest.approx(registration_score(images), abs=0.03)


def test_auto_turns_augmentation_off_for_registered_images_only():
    off = choose_augmentation(None, 0, registered(40))
    on = choose_augmentation(None, 0, placed_anywhere(40))
    assert (off.used, off.rule) == (False, "auto") and off.registration > REGISTERED
    assert (on.used, on.rule) == (True, "auto") and on.registration < REGISTERED
    assert "registered images" in off.describe() and "--augment" in off.describe()


def test_the_users_choice_and_augmented_views_win_over_the_score():
    images = registered(40)
    assert choose_augmentation(True, 0, images).used is True
    assert choose_augmentation(False, 0, placed_anywhere(40)).used is False
    views = choose_augmentation(None, 3, images)
    assert (views.used, views.rule, views.registration) == (True, "--aug-views", None)


def test_too_few_images_keep_augmentation_on():
    choice = choose_augmentation(None, 0, registered(3))
    assert choice.used and choice.registration is None


def test_odd_image_sizes_are_scored():
    assert registration_score(registered(20, size=50)) > REGISTERED
    assert registration_score(registered(20, size=20)) > REGISTERED  # smaller than the 32 px thumbnail
