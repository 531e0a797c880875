"""`--int8-max-drop`: make an int8 artifact pass its gate, cheapest remedy first.

What NNCF's accuracy-controlled quantization does for OpenVINO, for the ONNX and
TFLite int8 paths here: first the calibration methods (the user's, then minmax, entropy,
percentile), since a better range costs nothing at run time; then the classifier's head
in float, under each calibration in turn (pooling, Dense layers, softmax: a few thousand
multiply-adds, and where a fine-tuned model's training images, the calibration set, drive
activations far past anything validation shows: the ELPV grades run's hidden layer reached
437 on them and 16 on validation, its int8 logits rounded to ties, 547 of 1,000 decisions
flipped and every single layer kept float repaired nothing; the head in float, 12); then,
on the best calibration, layers are kept in float (TFLite dynamic range, which has no calibration: float
layers only, tflite_dynamic.py). Which ones is measured, as NNCF ranks them: the
per-layer diagnosis names the noisiest candidates, and each candidate alone is kept
in float and scored on the images whose decisions are at stake (every flipped image,
then those whose outputs moved most); candidates that repair no decision are
dropped. The rest are added in the order of the decisions they repair, each attempt
gated on the whole parity set as any export; a layer whose addition repairs nothing
there is reverted. The manifest entry ends with the attempts, the layers that stayed
float and their cost in batch-1 ms, timed interleaved (all-int8 and with-float runs
alternating), so a busy machine cannot make float layers look free.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.export.base import Calibration, ExportContext, ExportFormat, work_dir
from toolkit.export.heatmap import float_scope
from toolkit.model import HEAD_LAYER
from toolkit.progress import phase
from toolkit.quiet import silenced

LATENCY_RUNS = 10
RANK_CANDIDATES = 12  # at least this many of the noisiest layers are scored by their effect on decisions
RANK_IMAGES = 64  # the images a candidate is scored on: every flip first, then the largest output changes
HEAD_SCOPE = float_scope((HEAD_LAYER,))  # every op of the classifier's head (`model.build_head`)


@dataclasses.dataclass
class FixOptions:
    methods: list[dict]  # calibration records to try, in order (the user's first)
    max_float_layers: int  # the budget: at most this many layers kept in float


@dataclasses.dataclass
class Stakes:
    """The parity images whose decisions a float layer could change, with Keras's decisions on them."""

    images: np.ndarray
    reference: np.ndarray  # Keras's decisions
    outputs: np.ndarray  # Keras's probabilities
    decide: Callable[[np.ndarray], np.ndarray]
    flips: int  # how many of them the all-int8 artifact decides otherwise than Keras
    error: float  # the all-int8 artifact's mean |output - Keras's| on them


def calibration_order(first: dict, percentile: float) -> list[dict]:
    """The user's calibration, then the others (minmax, entropy, percentile), each once."""
    records = [{"method": m, **({"percentile": percentile} if m == "percentile" else {})} for m in Calibration]
    ordered = [dict(first)] + [r for r in records if r["method"] != first["method"]]
    return [{**r, "images": first["images"]} for r in ordered]


def stakes(images: np.ndarray, reference: np.ndarray, candidate: np.ndarray, decide) -> Stakes:
    """Every image the all-int8 artifact flips, then those whose outputs moved most, up to RANK_IMAGES."""
    ref_top, cand_top = decide(reference), decide(candidate)
    flipped = np.flatnonzero(ref_top != cand_top)
    moved = [
        i for i in np.argsort(-np.abs(reference - candidate).max(axis=1), kind="stable") if ref_top[i] == cand_top[i]
    ]
    index = np.concatenate([flipped, np.asarray(moved, np.int64)])[: max(RANK_IMAGES, len(flipped))]
    flips = int((ref_top[index] != cand_top[index]).sum())
    error = float(np.abs(candidate[index] - reference[index]).mean())
    return Stakes(images[index], ref_top[index], reference[index], decide, flips, error)


def fix_summary(entry: dict, ctx: ExportContext) -> dict:
    parity = entry["parity"]
    return {
        **_calibrated(ctx),
        **({"float_head": True} if ctx.float_scope == HEAD_SCOPE else {}),
        "float_layers": len(ctx.float_layers),
        "top1_agreement": parity["top1_agreement"],
        "flips": parity["flips"],
        "accuracy": parity["accuracy"],
        "passed": parity["passed"],
    }


def _calibrated(ctx: ExportContext) -> dict:
    """The calibration an attempt used; none for dynamic range, which calibrates nothing."""
    return {"calibration": dict(ctx.calibration)} if ctx.calibration else {}


def _score(entry: dict) -> tuple[float, float]:
    return entry["parity"]["top1_agreement"], entry["parity"]["accuracy"]


def _open(path: Path, labels: list[str] | None):
    from toolkit.runtime import load

    with silenced((2,)):
        return load(path, device="cpu", labels=labels, verify=False)


def _median_ms(paths: list[Path], labels: list[str] | None, image: np.ndarray, runs: int) -> list[float]:
    """Median batch-1 latency of each artifact, their runs alternating (after one warm-up run each)."""
    models = [_open(path, labels) for path in paths]
    for model in models:
        model.predict_arrays(image[None])
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for model, spent in zip(models, times):
            start = time.perf_counter()
            model.predict_arrays(image[None])
            spent.append(time.perf_counter() - start)
    return [float(np.median(t) * 1000) for t in times]


def batch1_ms(path: Path, labels: list[str] | None, image: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median batch-1 latency of one artifact through the runtime (after one warm-up run)."""
    return _median_ms([path], labels, image, runs)[0]


def interleaved_ms(
    first: Path, second: Path, labels, image: np.ndarray, runs: int = LATENCY_RUNS
) -> tuple[float, float]:
    """Median batch-1 latencies of two artifacts, timed alternately so both see the same machine load."""
    a, b = _median_ms([first, second], labels, image, runs)
    return a, b


def _effect(fmt: ExportFormat, ctx: ExportContext, path: Path, at_stake: Stakes) -> tuple[int, float]:
    """(flips, mean |output change|) on the images at stake of `fmt` built with `ctx.float_layers` into `path`."""
    with silenced((1, 2)):
        fmt.convert(ctx, path)
    probs = _open(path, ctx.labels).predict_arrays(at_stake.images)
    flips = int((at_stake.decide(probs) != at_stake.reference).sum())
    return flips, float(np.abs(probs - at_stake.outputs).mean())


def rank_by_decisions(
    fmt: ExportFormat, ctx: ExportContext, groups: list[list[str]], at_stake: Stakes, candidates: int
) -> list[dict]:
    """Each candidate group alone in float, scored on `at_stake`: decisions repaired, then output error removed.

    Best first; a group that changes nothing for the better is left out (it would only cost time).
    """
    scratch = work_dir(ctx) / f"rank-{fmt.filename}"
    scored = []
    for rank, group in enumerate(groups[:candidates]):
        ctx.float_layers = list(group)
        flips, error = _effect(fmt, ctx, scratch, at_stake)
        repaired, removed = at_stake.flips - flips, at_stake.error - error
        scored.append({"layers": list(group), "noise_rank": rank, "repaired": repaired, "error_removed": removed})
    ctx.float_layers = []
    helpful = [s for s in scored if s["repaired"] > 0 or (s["repaired"] == 0 and s["error_removed"] > 0)]
    return sorted(helpful, key=lambda s: (-s["repaired"], -s["error_removed"], s["noise_rank"]))


def fix_int8(fmt: ExportFormat, ctx: ExportContext, export_one: Callable[[], dict], parity, fix: FixOptions) -> dict:
    """Export `fmt` (an int8 format) until it passes; returns the manifest entry with an `int8_fix` record.

    `parity` is the export's ParitySet; `parity.outputs[fmt.key]` holds the last artifact's outputs on it.
    """
    attempts, best = [], None
    all_int8 = work_dir(ctx) / f"all-int8-{fmt.filename}"  # the best calibration's file: the latency baseline
    for record in fix.methods:
        ctx.calibration, ctx.float_layers = record, []
        entry = export_one()
        attempts.append(fix_summary(entry, ctx))
        if entry["parity"]["passed"]:
            return finish_fix(entry, ctx, attempts, None, parity.images[0], [])
        if best is None or _score(entry) > _score(best[1]):
            best = (record, entry)
            shutil.copyfile(ctx.export_dir / fmt.filename, all_int8)
    tried_head = not ctx.float_scope  # a heatmap artifact's scope is its map's; the fix does not run there
    if tried_head:
        head = _head_in_float(ctx, export_one, attempts, fix.methods)
        if head is not None:
            return finish_fix(head, ctx, attempts, all_int8, parity.images[0], [])
    record, entry = best
    ctx.calibration = record
    if tried_head or record is not fix.methods[-1]:
        entry = export_one()  # the best calibration's all-int8 artifact again (on disk and in parity.outputs)
    decide = parity.decide or (lambda probs: probs.argmax(axis=1))
    at_stake = stakes(parity.images, parity.reference, parity.outputs[fmt.key], decide)
    with phase(f"ranking {fmt.format} {fmt.precision} layers by their effect on {len(at_stake.images)} decisions"):
        with silenced((1, 2)):
            groups = fmt.rank_layers(ctx, parity.diagnosis_images()) if fmt.rank_layers else []
        ranked = rank_by_decisions(fmt, ctx, groups, at_stake, max(RANK_CANDIDATES, fix.max_float_layers))
    entry = _add_float_layers(ranked, ctx, export_one, entry, attempts, fix.max_float_layers)
    return finish_fix(entry, ctx, attempts, all_int8, parity.images[0], ranked)


def _head_in_float(ctx: ExportContext, export_one, attempts: list, methods: list[dict]) -> dict | None:
    """The whole head in float under each calibration in turn (the best one by flips may clip the base: on the
    ELPV grades run entropy flipped 287 all-int8 and 290 with the head float, minmax 547 and 12); the first
    entry that passes, its calibration and scope left in `ctx`; None, scope cleared, when none does."""
    ctx.float_scope = HEAD_SCOPE
    try:
        for record in methods:
            ctx.calibration = record
            trial = export_one()
            attempts.append({**fix_summary(trial, ctx), "kept": trial["parity"]["passed"]})
            if trial["parity"]["passed"]:
                return trial
    except BaseException:
        ctx.float_scope = ""
        raise
    ctx.float_scope = ""
    return None


def _better(trial: dict, best: dict) -> bool:
    """Fewer decisions differ on the whole parity set, or as many with less output error."""
    t, b = trial["parity"], best["parity"]
    return (t["flips"], t["mean_abs_diff"]) < (b["flips"], b["mean_abs_diff"])


def _add_float_layers(ranked, ctx: ExportContext, export_one, entry: dict, attempts: list, budget: int) -> dict:
    """Add the ranked groups one at a time, each gated on the whole parity set; a group that did not help is reverted."""
    best = trial = entry
    for candidate in ranked:
        kept = list(ctx.float_layers)
        wanted = list(dict.fromkeys([*kept, *candidate["layers"]]))
        if len(wanted) > budget:
            continue
        ctx.float_layers = wanted
        trial = export_one()
        helped = _better(trial, best)
        attempts.append({**fix_summary(trial, ctx), "kept": helped})
        if not helped:
            ctx.float_layers = kept
            continue
        best = trial
        if trial["parity"]["passed"]:
            return trial
    if trial is not best:
        best = export_one()  # the last trial was reverted: the artifact on disk must be the best one kept
    return best


def finish_fix(entry: dict, ctx: ExportContext, attempts: list[dict], all_int8: Path | None, image, ranked) -> dict:
    head = ctx.float_scope == HEAD_SCOPE
    record = {"attempts": attempts, **_calibrated(ctx), "float_head": head, "float_layers": list(ctx.float_layers)}
    if ranked:
        record["ranking"] = ranked
    if (ctx.float_layers or head) and all_int8 is not None:
        int8_ms, now = interleaved_ms(all_int8, ctx.export_dir / entry["path"], ctx.labels, image)
        record["latency_ms"] = {
            "all_int8": int8_ms,
            "with_float_layers": now,
            "cost": now - int8_ms,
            "timing": "interleaved",
        }
    entry["int8_fix"] = record
    ctx.float_layers = []
    if head:
        ctx.float_scope = ""
    return entry
