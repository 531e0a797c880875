"""`toolkit explain`: where in the image the decision came from, as a heatmap over the image.

For a `.keras` model: Grad-CAM (Selvaraju et al. 2017) on the base's last block, the
`features` sub-model's output: the gradient of the class's log-probability with respect
to those activations, averaged over space, weighs each channel; their weighted sum,
through a ReLU, is the map, scaled to 0..1 and resized to the image. It works for every
head (pooled or Flatten), since it needs only gradients. The map, its peak (as fractions
of the image side) and an overlay PNG per image (the map over the image, the label and
its probability) are what `toolkit explain` writes. Heatmaps from the exported artifacts
(ONNX, TFLite, OpenVINO, the web page) are not built yet: they are refused in one line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.errors import ModelError
from toolkit.fileio import write_with


@dataclasses.dataclass
class Explanation:
    image: str
    label: str
    probability: float
    peak: tuple[float, float]  # (x, y) of the map's maximum, as fractions of the image's width and height
    heatmap: np.ndarray = dataclasses.field(repr=False)  # H x W, 0..1, at the model's input size

    def to_json(self) -> dict:
        return {"image": self.image, "label": self.label, "probability": self.probability,
                "peak": list(self.peak)}  # fmt: skip


def grad_cam(model, pixels: np.ndarray, classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(maps N x H x W in 0..1 at the input size, probabilities N x K) for uint8 NHWC `pixels`.

    `classes` picks the class each map explains (default: each image's most probable class).
    """
    import tensorflow as tf

    from toolkit.model import features_part, head_part

    features, head = features_part(model), head_part(model)
    x = tf.convert_to_tensor(pixels.astype(np.float32))
    activations = features(x, training=False)
    with tf.GradientTape() as tape:
        tape.watch(activations)
        probs = head(activations, training=False)
        chosen = tf.argmax(probs, axis=1) if classes is None else tf.convert_to_tensor(classes, tf.int64)
        score = tf.math.log(tf.gather(probs, chosen, axis=1, batch_dims=1) + 1e-12)
    grads = tape.gradient(score, activations)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))[..., None]
    cam = tf.image.resize(cam, pixels.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, cam / np.maximum(peak, 1e-12), 0.0), probs.numpy()


def peak_of(heatmap: np.ndarray) -> tuple[float, float]:
    """The map's maximum as (x, y) fractions of width and height (pixel centres)."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return ((x + 0.5) / heatmap.shape[1], (y + 0.5) / heatmap.shape[0])


def explain_keras(classifier, images: list[Path], batch_size: int = 8) -> list[Explanation]:
    """Grad-CAM for each image of a loaded `.keras` classifier, through the same decoder as training;
    the label and probability are the classifier's own (its operating point included)."""
    model = classifier.backend.model
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixels = np.stack([classifier.preprocess(p) for p in chunk])
        probs = classifier.predict_arrays(pixels)
        decided = classifier.decide(probs)
        maps, _ = grad_cam(model, pixels, decided)
        for path, heatmap, p, index in zip(chunk, maps, probs, decided):
            out.append(Explanation(str(path), classifier.labels[index], float(p[index]), peak_of(heatmap), heatmap))
    return out


def check_explainable(model_path: Path) -> None:
    if Path(model_path).suffix.lower() != ".keras":
        raise ModelError(
            f"{Path(model_path).name}: heatmaps come from a .keras model for now (Grad-CAM); "
            "heatmap outputs in ONNX, TFLite and OpenVINO artifacts are not built yet"
        )


def write_overlay(explanation: Explanation, path: Path) -> None:
    """The map over the image (jet, half transparent), the label and its probability in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.imaging import load_rgb

    image = load_rgb(explanation.image)
    heat = np.asarray(matplotlib.colormaps["jet"](explanation.heatmap)[..., :3] * 255, np.uint8)
    heat_img = Image.fromarray(heat).resize(image.size, Image.Resampling.BILINEAR)
    blended = Image.blend(image, heat_img, 0.45)
    fig, ax = plt.subplots(figsize=(4, 4.3))
    ax.imshow(blended)
    px, py = explanation.peak
    ax.plot([px * image.size[0]], [py * image.size[1]], marker="+", color="white", markersize=14, mew=2)
    ax.set_title(f"{explanation.label} {explanation.probability:.3f}")
    ax.axis("off")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
