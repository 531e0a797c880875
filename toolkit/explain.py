"""`toolkit explain`: where in the image the decision came from, as a heatmap over the image.

Grad-CAM (Selvaraju et al. 2017) on the base's last convolutional map, for the class each image is
reported as (the operating point included). From a heatmap artifact (`toolkit export RUN --heatmap`:
ONNX, TFLite, OpenVINO) the maps are the file's own second output, through the TF-free runtime; from a
`.keras` file they come from the same graph built in Keras (`toolkit.heatmap_model`), so both paths
give the map an app will show. The map is scaled to 0..1 by its peak and resized to the model's input
(`toolkit.runtime.heatmap`); `toolkit explain` writes it as an overlay PNG per image (the map over the
image, the label and its probability) and, with --json, the peak (fractions of the image side) and a
summary of the map per image.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.errors import ModelError
from toolkit.fileio import write_with
from toolkit.runtime.heatmap import class_maps, peak_of, to_image

HOT = 0.5  # the share of the image whose map is at least half its peak: how concentrated the evidence is


@dataclasses.dataclass
class Explanation:
    image: str
    label: str
    probability: float
    peak: tuple[float, float]  # (x, y) of the map's maximum, as fractions of the image's width and height
    heatmap: np.ndarray = dataclasses.field(repr=False)  # H x W, 0..1, at the model's input size

    def to_json(self) -> dict:
        return {
            "image": self.image,
            "label": self.label,
            "probability": self.probability,
            "peak": list(self.peak),
            "map": {"mean": float(self.heatmap.mean()), "hot_fraction": float((self.heatmap >= HOT).mean())},
        }


def check_explainable(classifier) -> None:
    """A `.keras` model, or an artifact whose record names a heatmap output; anything else in one line."""
    if classifier.format != "keras" and not classifier.has_heatmap:
        raise ModelError(
            f"{Path(classifier.path).name} has no heatmap output: export one with `toolkit export RUN --heatmap` "
            "(model_float32_heatmap.onnx, ...), or explain the run's best.keras"
        )


def _heatmaps_of(classifier):
    """batch -> (probabilities, maps): the artifact's own outputs, or a `.keras` model's graph traced once."""
    if classifier.format == "keras":
        from toolkit.heatmap_model import heatmap_function

        return heatmap_function(classifier.backend.model)
    return classifier.heatmap_arrays


def explain_images(classifier, images: list[Path], batch_size: int = 8) -> list[Explanation]:
    """One explanation per image, decoded as training decoded it; the label and probability are the model's own."""
    out, heatmaps = [], _heatmaps_of(classifier)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixels = np.stack([classifier.preprocess(p) for p in chunk])
        probs, raw = heatmaps(pixels)
        decided = classifier.decide(probs)
        for path, grid, p, index in zip(chunk, class_maps(raw, decided), probs, decided):
            heatmap = to_image(grid, classifier.image_size)
            out.append(Explanation(str(path), classifier.labels[index], float(p[index]), peak_of(heatmap), heatmap))
    return out


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
