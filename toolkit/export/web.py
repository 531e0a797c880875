"""A static web page that classifies images in the browser with onnxruntime-web: `--format web`.

`export/web-int8/` (or `web-float32/`) is self-contained: index.html + app.js, the
ONNX model, bundle.json (labels, input size, operating point, the model-facts record) and the
onnxruntime-web files it loads (`ort/`), copied at export time from the npm
package `onnxruntime-web`, so nothing comes from a CDN and the image never leaves
the device. app.js decodes and resizes exactly as `toolkit.runtime` does (a port
of Pillow's bilinear resampler), so the page's probabilities are the runtime's.
A heatmap bundle (`--format web --heatmap`: `web-float32-heatmap/`) also draws the model's Grad-CAM of
the label it shows over the picked image and says where its peak is, scaled and resized as
`toolkit.runtime.heatmap` does (the same Pillow resampler, in floating point).

Where onnxruntime-web is looked for: $TOOLKIT_ORT_WEB, then node_modules/ in the
working folder and in the toolkit's source checkout (`npm install` there).
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from toolkit.errors import ExportError
from toolkit.export import onnx_float, onnx_int8
from toolkit.export.base import ExportContext, ExportFormat
from toolkit.facts import FACTS_KEY
from toolkit.fileio import write_json_atomic, write_with

ASSETS = Path(__file__).with_name("web_assets")
ORT_WEB_VERSION = "1.30.0"  # package.json pins the same version
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")
MODEL_FILE = "model.onnx"


def find_ort_web() -> Path:
    """The `dist` folder of the onnxruntime-web npm package; a one-line error naming the fix if absent."""
    candidates = []
    if os.environ.get("TOOLKIT_ORT_WEB"):
        candidates.append(Path(os.environ["TOOLKIT_ORT_WEB"]))
    candidates += [
        Path.cwd() / "node_modules" / "onnxruntime-web",
        Path(__file__).parents[2] / "node_modules" / "onnxruntime-web",
    ]
    for package in candidates:
        dist = package / "dist"
        if all((dist / name).is_file() for name in ORT_FILES):
            return dist
    raise ExportError(
        f"--format web copies onnxruntime-web's files into the bundle: run `npm install onnxruntime-web@{ORT_WEB_VERSION}` "
        "in this folder, or set TOOLKIT_ORT_WEB=path/to/node_modules/onnxruntime-web"
    )


def bundle_config(ctx: ExportContext, precision: str) -> dict:
    """bundle.json: what app.js needs to know about the model."""
    return {
        "title": f"{' vs '.join(ctx.labels)} classifier ({precision}{', with heatmap' if ctx.facts.heatmap else ''})",
        "model": MODEL_FILE,
        "input_name": onnx_float.INPUT_NAME,
        "output_name": onnx_float.OUTPUT_NAME,
        "image_size": ctx.image_size,
        "labels": ctx.labels,
        "decision": ctx.decision,
        "onnxruntime_web": ORT_WEB_VERSION,
        FACTS_KEY: ctx.facts.to_json(),
    }


def _onnx_model(ctx: ExportContext, precision: str, dest: Path) -> None:
    """The bundle's model: this export's ONNX artifact of that precision, or a fresh conversion."""
    made = ctx.scratch.get(f"onnx-{precision}")
    if made is not None and made.is_file():
        shutil.copyfile(made, dest)
    elif precision == "int8":
        onnx_int8.convert_int8(ctx, dest)
    else:
        onnx_float.convert_float32(ctx, dest)


def _converter(precision: str):
    def convert(ctx: ExportContext, dest: Path) -> None:
        """Write the bundle around `dest` (the model, renamed into place last by the caller)."""
        dist = find_ort_web()
        folder = dest.parent
        for name in ORT_FILES:
            write_with(folder / "ort" / name, functools.partial(shutil.copyfile, dist / name))
        for name in ("index.html", "app.js"):
            write_with(folder / name, functools.partial(shutil.copyfile, ASSETS / name))
        write_json_atomic(folder / "bundle.json", bundle_config(ctx, precision))
        _onnx_model(ctx, precision, dest)

    return convert


FORMATS = [
    ExportFormat(
        "web",
        precision,
        f"web-{precision}/{MODEL_FILE}",
        _converter(precision),
        onnx_float.describe_onnx,
        advice,
        "onnxruntime.quantization" if precision == "int8" else "tf2onnx",
    )
    for precision, advice in (
        ("int8", "use more --calib-images, or build the float32 bundle (--precision float32)"),
        ("float32", "report the failing op"),
    )
]
