"""A seeded synthetic dermoscopy-like data set: the built-in default.

Each lesion has an "atypia" score in [0, 1] that drives the ABCD rule's cues
together: asymmetry, a ragged border, and how many colours it has. Benign
lesions draw it mostly low, malignant ones mostly high, but the two
distributions overlap (`ATYPIA_BETA`), so some benign lesions look atypical and
some melanomas look harmless, as in real dermoscopy: a good classifier lands
near 90%, not 100%, and the demo can tell a better recipe from a worse one.
Class-independent nuisances (skin tone, uneven lighting, vignetting, hair,
ruler marks, size and position) make it learn the lesion, not the photograph.

Where each lesion is, is known: `OUT/lesions.csv` records its centre and radius (as
fractions of the image side) per image, beside the images and never in them, so a
heatmap can be checked against where the lesion really is.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from toolkit.fileio import write_text_atomic

CLASSES = ("benign", "malignant")
LESIONS_CSV = "lesions.csv"  # path (under OUT), centre x, centre y, radius: fractions of the image side
SUPERSAMPLE = 2  # draw at 2x and downsample, for antialiased edges
# Beta(a, b) of the atypia score per class: benign leans low, malignant high, with overlap.
# Beta(2, 8) vs Beta(8, 2) put the recipe with real weights near 90% (measured: README, "Measured").
ATYPIA_BETA = {"benign": (2.0, 8.0), "malignant": (8.0, 2.0)}


@dataclasses.dataclass(frozen=True)
class Lesion:
    """Where a lesion was drawn, as fractions of the image side: its centre and its largest radius."""

    cx: float
    cy: float
    radius: float


@dataclasses.dataclass(frozen=True)
class DemoDataConfig:
    per_class: int = 160
    size: int = 224
    seed: int = 0
    test_fraction: float = 0.25
    quality: int = 92


def _skin_background(rng: np.random.Generator, n: int) -> Image.Image:
    tone = np.array([rng.uniform(150, 245), rng.uniform(105, 200), rng.uniform(80, 175)], dtype=np.float32)
    tone[1] = min(tone[1], tone[0] - 10)
    tone[2] = min(tone[2], tone[1] - 5)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) * rng.uniform(0.1, 0.45)
    vignette = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * rng.uniform(0.0, 0.6)
    light = rng.uniform(0.75, 1.1) * (1.0 + gradient - vignette)
    noise = rng.normal(0, rng.uniform(2, 7), size=(n, n, 3))
    img = tone[None, None, :] * light[..., None] + noise
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _lesion_polygon(
    rng: np.random.Generator, cx: float, cy: float, radius: float, atypia: float
) -> list[tuple[float, float]]:
    """An outline whose asymmetry and raggedness grow with `atypia`."""
    points = 180
    theta = np.linspace(0, 2 * np.pi, points, endpoint=False)
    r = np.ones(points)
    for k in range(2, 5):
        r += atypia * rng.uniform(0.04, 0.2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r += atypia * rng.uniform(0.1, 0.3) * np.cos(theta + rng.uniform(0, 2 * np.pi))
    jagged = rng.normal(0, 0.005 + 0.06 * atypia, points)
    r += np.convolve(np.concatenate([jagged[-2:], jagged, jagged[:2]]), np.ones(3) / 3, "valid")[:points]
    rx, ry = radius, radius * rng.uniform(0.65, 1.0)
    rot = rng.uniform(0, np.pi)
    x = r * rx * np.cos(theta)
    y = r * ry * np.sin(theta)
    xr = cx + x * np.cos(rot) - y * np.sin(rot)
    yr = cy + x * np.sin(rot) + y * np.cos(rot)
    return list(zip(xr.tolist(), yr.tolist()))


def _brown(rng: np.random.Generator, darkness: float) -> tuple[int, int, int]:
    base = np.array([120, 75, 45]) * darkness + rng.normal(0, 6, 3)
    return tuple(int(v) for v in np.clip(base, 10, 230))


PALETTE = [(40, 25, 20), (20, 15, 15), (95, 100, 120), (150, 60, 55), (170, 120, 85), (90, 55, 35)]


def _draw_lesion(rng: np.random.Generator, img: Image.Image, atypia: float) -> Lesion:
    n = img.size[0]
    radius = n * rng.uniform(0.12, 0.3)
    cx = n * rng.uniform(0.33, 0.67)
    cy = n * rng.uniform(0.33, 0.67)
    polygon = _lesion_polygon(rng, cx, cy, radius, atypia)
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).polygon(polygon, fill=255)
    colour = Image.new("RGB", img.size, _brown(rng, rng.uniform(0.5, 1.05)))
    # Colour variegation: more blotches, and more contrasting ones, with atypia.
    draw = ImageDraw.Draw(colour)
    blotches = int(rng.poisson(0.5 + 4.0 * atypia))
    for _ in range(blotches):
        px, py = polygon[int(rng.integers(len(polygon)))]
        bx = cx + (px - cx) * rng.uniform(0.0, 0.8)
        by = cy + (py - cy) * rng.uniform(0.0, 0.8)
        br = radius * rng.uniform(0.15, 0.45)
        contrast = PALETTE[int(rng.integers(len(PALETTE)))] if rng.random() < atypia else _brown(rng, 0.8)
        draw.ellipse([bx - br, by - br * rng.uniform(0.5, 1.2), bx + br, by + br], fill=contrast)
    colour = colour.filter(ImageFilter.GaussianBlur(radius * 0.12))
    mask = mask.filter(ImageFilter.GaussianBlur(n * (0.002 + 0.004 * rng.random())))
    img.paste(colour, (0, 0), mask)
    reach = max(float(np.hypot(px - cx, py - cy)) for px, py in polygon)  # the ragged border's farthest point
    return Lesion(cx / n, cy / n, reach / n)


def _draw_hair(rng: np.random.Generator, img: Image.Image) -> None:
    n = img.size[0]
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 7))):
        x0, y0 = rng.uniform(0, n, 2)
        angle = rng.uniform(0, 2 * np.pi)
        curve = rng.uniform(-0.02, 0.02)
        points = []
        for t in np.linspace(0, n * rng.uniform(0.4, 1.0), 40):
            angle += curve
            points.append((x0 + t * np.cos(angle), y0 + t * np.sin(angle)))
        shade = int(rng.uniform(10, 60))
        draw.line(points, fill=(shade, shade - 5 if shade > 5 else 0, 0), width=max(1, int(n * 0.006)))


def _draw_ruler(rng: np.random.Generator, img: Image.Image) -> None:
    """Millimetre ticks along one edge, as dermatoscopes with a scale print them."""
    n = img.size[0]
    draw = ImageDraw.Draw(img)
    edge = n * rng.uniform(0.03, 0.1)
    step = n * rng.uniform(0.025, 0.04)
    shade = int(rng.uniform(0, 60))
    for i in range(int(n / step)):
        length = edge * (1.6 if i % 5 == 0 else 1.0)
        draw.line([(i * step, n - 1), (i * step, n - length)], fill=(shade, shade, shade), width=max(1, n // 200))


def _vignette(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    """The dark circular rim of a contact dermatoscope."""
    n = img.size[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n - 0.5
    rim = np.clip((np.sqrt(xx**2 + yy**2) - rng.uniform(0.42, 0.55)) * 12, 0, 1)
    return Image.fromarray((np.asarray(img, np.float32) * (1 - rim[..., None])).astype(np.uint8))


def render_lesion(rng: np.random.Generator, size: int, malignant: bool) -> tuple[Image.Image, Lesion]:
    """One synthetic dermoscopy image of `size` x `size` pixels, and where its lesion is."""
    n = size * SUPERSAMPLE
    img = _skin_background(rng, n)
    atypia = float(rng.beta(*ATYPIA_BETA["malignant" if malignant else "benign"]))
    lesion = _draw_lesion(rng, img, atypia)
    if rng.random() < 0.45:
        _draw_hair(rng, img)
    if rng.random() < 0.2:
        _draw_ruler(rng, img)
    if rng.random() < 0.35:
        img = _vignette(rng, img)
    return img.resize((size, size), Image.Resampling.LANCZOS), lesion


def _remove_previous(out: Path) -> None:
    """Delete the images an earlier run wrote (and only those), so no image sits in both train/ and test/."""
    for split in ("train", "test"):
        for name in CLASSES:
            for old in (out / split / name).glob(f"{name}_[0-9][0-9][0-9][0-9].jpg"):
                old.unlink()


def write_demo_dataset(out_dir: str | Path, config: DemoDataConfig = DemoDataConfig()) -> dict[str, dict[str, int]]:
    """Write `OUT/train/<class>/*.jpg` and `OUT/test/<class>/*.jpg`; return counts per split."""
    if config.per_class < 2:
        raise ValueError("per_class must be at least 2 (one train and one test image)")
    out = Path(out_dir)
    _remove_previous(out)
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    lesions: list[tuple[str, Lesion]] = []
    n_test = max(1, round(config.per_class * config.test_fraction))
    for class_index, name in enumerate(CLASSES):
        # One generator per class and index keeps every image independent of
        # the others' count: growing --per-class keeps the earlier images.
        for i in range(config.per_class):
            rng = np.random.default_rng([config.seed, class_index, i])
            split = "test" if i < n_test else "train"
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            img, lesion = render_lesion(rng, config.size, malignant=name == "malignant")
            img.save(folder / f"{name}_{i:04d}.jpg", quality=config.quality)
            lesions.append((f"{split}/{name}/{name}_{i:04d}.jpg", lesion))
            counts[split][name] = counts[split].get(name, 0) + 1
    write_text_atomic(out / LESIONS_CSV, _lesions_csv(lesions))
    return counts


def _lesions_csv(rows: list[tuple[str, Lesion]]) -> str:
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "cx", "cy", "radius"])
    for path, lesion in rows:
        writer.writerow([path, f"{lesion.cx:.5f}", f"{lesion.cy:.5f}", f"{lesion.radius:.5f}"])
    return out.getvalue()


def read_lesions(out_dir: str | Path) -> dict[str, Lesion]:
    """lesions.csv of a demo folder: path under it -> Lesion."""
    with open(Path(out_dir) / LESIONS_CSV, newline="") as handle:
        return {
            row["path"]: Lesion(float(row["cx"]), float(row["cy"]), float(row["radius"]))
            for row in csv.DictReader(handle)
        }
