"""`--int8-max-drop`: make an int8 artifact pass its gate, cheapest remedy first.

What NNCF's accuracy-controlled quantization does for OpenVINO, for both int8
paths here: first the calibration methods (the user's, then minmax, entropy,
percentile), since a better range costs nothing at run time; then, on the best
of those, the layers the per-layer diagnosis ranks worst are kept in float one
more at a time (ONNX: `nodes_to_exclude`; TFLite: the quantizer's denylist) until
the gate passes or the budget of float layers is spent. Each attempt is gated on
the same validation images as any export, and recorded; the manifest entry ends
with the attempts, the layers that stayed float and what they cost in batch-1 ms.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.export.base import Calibration, ExportContext, ExportFormat
from toolkit.progress import phase
from toolkit.quiet import silenced

LATENCY_RUNS = 10


@dataclasses.dataclass
class FixOptions:
    methods: list[dict]  # calibration records to try, in order (the user's first)
    max_float_layers: int  # the budget: at most this many layers kept in float


def calibration_order(first: dict, percentile: float) -> list[dict]:
    """The user's calibration, then the others (minmax, entropy, percentile), each once."""
    records = [{"method": m, **({"percentile": percentile} if m == "percentile" else {})} for m in Calibration]
    ordered = [dict(first)] + [r for r in records if r["method"] != first["method"]]
    return [{**r, "images": first["images"]} for r in ordered]


def _summary(entry: dict, ctx: ExportContext) -> dict:
    parity = entry["parity"]
    return {
        "calibration": dict(ctx.calibration),
        "float_layers": len(ctx.float_layers),
        "top1_agreement": parity["top1_agreement"],
        "accuracy": parity["accuracy"],
        "passed": parity["passed"],
    }


def _score(entry: dict) -> tuple[float, float]:
    return entry["parity"]["top1_agreement"], entry["parity"]["accuracy"]


def batch1_ms(path: Path, labels: list[str] | None, image: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median batch-1 latency of an artifact through the runtime (after one warm-up run)."""
    from toolkit.runtime import load

    classifier = load(path, device="cpu", labels=labels, verify=False)
    classifier.predict_arrays(image[None])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        classifier.predict_arrays(image[None])
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def fix_int8(
    fmt: ExportFormat, ctx: ExportContext, export_one: Callable[[], dict], rank_images: np.ndarray, fix: FixOptions
) -> dict:
    """Export `fmt` (an int8 format) until it passes; returns the manifest entry with an `int8_fix` record."""
    attempts, best = [], None
    for record in fix.methods:
        ctx.calibration, ctx.float_layers = record, []
        entry = export_one()
        attempts.append(_summary(entry, ctx))
        if entry["parity"]["passed"]:
            return _finish(entry, ctx, attempts, None, rank_images)
        if best is None or _score(entry) > _score(best[1]):
            best = (record, entry)
    record, entry = best
    ctx.calibration = record
    if record is not fix.methods[-1]:
        entry = export_one()  # the best calibration's artifact again, to rank its layers
    all_int8 = batch1_ms(ctx.export_dir / fmt.filename, ctx.labels, rank_images[0])
    with phase(f"ranking {fmt.format} int8 layers on {len(rank_images)} validation images"), silenced((1, 2)):
        groups = fmt.rank_layers(ctx, rank_images) if fmt.rank_layers else []
    for group in groups[: fix.max_float_layers]:
        ctx.float_layers = list(dict.fromkeys([*ctx.float_layers, *group]))
        entry = export_one()
        attempts.append(_summary(entry, ctx))
        if entry["parity"]["passed"]:
            break
    return _finish(entry, ctx, attempts, all_int8, rank_images)


def _finish(entry: dict, ctx: ExportContext, attempts: list[dict], all_int8_ms, images: np.ndarray) -> dict:
    record = {"attempts": attempts, "calibration": dict(ctx.calibration), "float_layers": list(ctx.float_layers)}
    if ctx.float_layers:
        now = batch1_ms(ctx.export_dir / entry["path"], ctx.labels, images[0])
        record["latency_ms"] = {"all_int8": all_int8_ms, "with_float_layers": now, "cost": now - all_int8_ms}
    entry["int8_fix"] = record
    ctx.float_layers = []
    return entry
