from __future__ import annotations

import math

import numpy as np
import pytest

from toolkit.data.augment import AugmentConfig, RandomAffine


@pytest.fixture(scope="module")
def tf():
    from toolkit.tf_setup import import_tensorflow

    return import_tensorflow()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (16, 24, 32, 3)).astype(np.float32)


def test_no_transform_is_the_identity_and_flips_are_exact(tf, images):
    still = RandomAffine(0, AugmentConfig(rotation=0, zoom=0, shift=0, flip_horizontal=False, flip_vertical=False))
    np.testing.assert_array_equal(still(tf.constant(images)).numpy(), images)
    flipped = RandomAffine(0, AugmentConfig(rotation=0, zoom=0, shift=0, flip_vertical=False))(tf.constant(images))
    kinds = [
        "same" if np.array_equal(out, img) else "mirror" if np.array_equal(out, img[:, ::-1]) else "other"
        for out, img in zip(flipped.numpy(), images)
    ]
    assert "other" not in kinds and {"same", "mirror"} == set(kinds)


def test_transforms_stay_in_the_configured_ranges(tf):
    config = AugmentConfig()
    t = RandomAffine(3, config).transforms(2000, 100, 200).numpy()
    a = t[:, [0, 1, 3, 4]].reshape(-1, 2, 2)
    scale = np.sqrt(np.abs(np.linalg.det(a)))  # rotation and flips keep areas; zoom scales them
    assert scale.min() >= 1 - config.zoom - 1e-5 and scale.max() <= 1 + config.zoom + 1e-5
    assert scale.max() - scale.min() > config.zoom  # the whole range is used
    # First column: sx * (cos, sin); cos > 0 within +-36 degrees, so sign(a00) undoes a flip.
    angle = np.abs(np.arctan2(a[:, 1, 0] * np.sign(a[:, 0, 0]), np.abs(a[:, 0, 0])))
    assert angle.max() <= config.rotation * 2 * math.pi + 1e-4 and angle.max() > config.rotation * 2 * math.pi * 0.9
    centre = np.array([(200 - 1) / 2, (100 - 1) / 2])
    mapped = np.einsum("nij,j->ni", a, centre) + t[:, [2, 5]]
    shift = np.abs(mapped - centre) / np.array([200, 100])  # where the output centre is read from
    assert shift.max() <= config.shift + 1e-5 and shift.max() > config.shift * 0.9
    assert np.all(t[:, 6:] == 0)


def test_same_seed_same_augmentations_in_a_function_and_a_data_pipeline(tf, images):
    first = RandomAffine(7)(tf.constant(images)).numpy()
    again = RandomAffine(7)(tf.constant(images)).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, images)
    aug = RandomAffine(7)
    batches = [b.numpy() for b in tf.data.Dataset.from_tensor_slices(images).batch(8).map(aug)]
    assert [b.shape for b in batches] == [(8, 24, 32, 3)] * 2
    # The same seed called as a function on the same batches draws the same transforms.
    as_function = RandomAffine(7)
    direct = [as_function(tf.constant(images[i : i + 8])).numpy() for i in (0, 8)]
    np.testing.assert_allclose(np.concatenate(batches), np.concatenate(direct), atol=1e-3)
    assert not np.array_equal(np.concatenate(batches), images)
    assert float(np.concatenate(batches).min()) >= 0 and float(np.concatenate(batches).max()) <= 255
