"""Training-time augmentation: random flip, rotation, zoom and shift as one affine warp.

Keras's RandomFlip, RandomRotation, RandomZoom and RandomTranslation draw these
same transforms but resample the image once each. Composed into one matrix, the
image is resampled once: about 4x less work per batch, which matters when
augmentation runs between the base's forward passes every epoch, and one
bilinear interpolation instead of three successive blurs.

Ranges follow those Keras layers' conventions, so `AugmentConfig()` matches the
classic recipe `RandomFlip("horizontal_and_vertical"), RandomTranslation(0.1, 0.1),
RandomZoom(0.1), RandomRotation(0.1)`, with reflected borders.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 0.1  # fraction of a full turn, either way (0.1 = +-36 degrees)
    zoom: float = 0.1  # the image is scaled by a factor in [1 - zoom, 1 + zoom]
    shift: float = 0.1  # fraction of the height/width, either way
    flip_horizontal: bool = True
    flip_vertical: bool = True
    fill_mode: str = "REFLECT"  # how pixels from outside the image are filled


class RandomAffine:
    """Callable on a float batch (N, H, W, 3), in a tf.function or a tf.data map.

    Random draws come from one seeded `tf.random.Generator`, so a run with the
    same seed sees the same sequence of augmentations.
    """

    def __init__(self, seed: int, config: AugmentConfig = AugmentConfig()) -> None:
        import tensorflow as tf

        self.config = config
        self.generator = tf.random.Generator.from_seed(seed)

    def transforms(self, batch, height, width):
        """Per-image projective transforms (N, 8) mapping output pixels to input pixels."""
        import tensorflow as tf

        c = self.config
        draw = lambda low, high: self.generator.uniform((batch,), low, high)  # noqa: E731

        def sign(enabled: bool):
            if not enabled:
                return tf.ones((batch,))
            return tf.where(self.generator.uniform((batch,)) < 0.5, -1.0, 1.0)

        angle = draw(-c.rotation * 2 * math.pi, c.rotation * 2 * math.pi)
        scale = draw(1.0 - c.zoom, 1.0 + c.zoom)
        h = tf.cast(height, tf.float32)
        w = tf.cast(width, tf.float32)
        dx, dy = draw(-c.shift, c.shift) * w, draw(-c.shift, c.shift) * h
        sx, sy = scale * sign(c.flip_horizontal), scale * sign(c.flip_vertical)
        cos, sin = tf.cos(angle), tf.sin(angle)
        # input = A (output - centre) + centre + shift, with A = rotation @ diag(sx, sy).
        a00, a01, a10, a11 = cos * sx, -sin * sy, sin * sx, cos * sy
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        a02 = cx - a00 * cx - a01 * cy + dx
        a12 = cy - a10 * cx - a11 * cy + dy
        zero = tf.zeros((batch,))
        return tf.stack([a00, a01, a02, a10, a11, a12, zero, zero], axis=1)

    def __call__(self, images, training: bool = True):
        import tensorflow as tf

        if not training:
            return images
        shape = tf.shape(images)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=self.transforms(shape[0], shape[1], shape[2]),
            output_shape=shape[1:3],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode=self.config.fill_mode,
        )
