"""What an app does with a heatmap output (toolkit.runtime.heatmap): pick, scale, resize, find the peak, compare."""

from __future__ import annotations

import numpy as np

from toolkit.runtime.heatmap import agreement, class_maps, normalized, peak_of, to_image


def _maps(n: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 3, (n, 7, 7)).astype(np.float32)


def test_each_image_gets_the_map_of_its_own_class():
    raw = np.zeros((2, 3, 3, 2), np.float32)
    raw[0, 0, 0, 1] = 5.0
    raw[1, 2, 2, 0] = 7.0
    picked = class_maps(raw, np.array([1, 0]))
    assert picked.shape == (2, 3, 3) and picked[0, 0, 0] == 5.0 and picked[1, 2, 2] == 7.0


def test_maps_are_scaled_by_their_own_peak_and_an_empty_map_stays_empty():
    maps = np.stack([np.full((2, 2), 4.0), np.zeros((2, 2)), np.array([[-1.0, 2.0], [1.0, 0.0]])])
    scaled = normalized(maps)
    assert scaled[0].max() == 1.0 and not scaled[1].any() and scaled[2].tolist() == [[0.0, 1.0], [0.5, 0.0]]


def test_the_peak_of_a_resized_map_is_its_cells_centre():
    grid = np.zeros((4, 4), np.float32)
    grid[1, 2] = 1.0  # an interior cell: its centre at x 2.5/4, y 1.5/4
    x, y = peak_of(to_image(grid, (64, 64)))
    assert abs(x - 2.5 / 4) < 0.02 and abs(y - 1.5 / 4) < 0.02
    corner = np.zeros((4, 4), np.float32)
    corner[0, 0] = 1.0  # a corner cell holds its value out to the border: the plateau's centre, not pixel 0
    x, y = peak_of(to_image(corner, (64, 64)))
    assert 0.05 < x < 0.13 and 0.05 < y < 0.13


def test_identical_maps_agree_and_maps_that_point_elsewhere_do_not():
    maps = _maps()
    same = agreement(maps, maps * 3.0, bound=0.01)  # a scale changes nothing: maps are compared at their peak
    assert same.passed and same.p95_max_diff < 1e-6 and same.same_peak == 1.0
    elsewhere = agreement(maps, maps[:, ::-1, ::-1], bound=0.35)
    assert not elsewhere.passed and "heatmap" in elsewhere.failure() and elsewhere.same_peak < 0.5
    noisy = agreement(maps, maps + np.random.default_rng(1).normal(0, 0.01, maps.shape), bound=0.05)
    assert noisy.passed and 0 < noisy.p95_max_diff < 0.05


def test_broken_maps_fail():
    maps = _maps()
    assert not agreement(maps, maps[:, :6], bound=1.0).passed  # another grid
    nan = maps.copy()
    nan[0, 0, 0] = np.nan
    assert not agreement(maps, nan, bound=1.0).passed
