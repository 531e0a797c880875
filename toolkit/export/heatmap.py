"""`toolkit export RUN --heatmap`: the selected formats once more, from the classifier with a heatmap output.

Each heatmap artifact is its format's own converter run on `toolkit.heatmap_model.heatmap_model` (the
classifier plus Grad-CAM as a second output, in forward ops), written beside the plain artifact under
its own name (`model_float32_heatmap.onnx`, `web-float32-heatmap/`), with the facts record saying where
the maps are (`ModelFacts.heatmap`). The plain artifacts stay single-output, so MediaPipe Tasks and apps
built on them are unaffected. The automatic int8 fix is not applied to heatmap artifacts: they are
explanations beside a shipped model, gated like it on their probabilities and on their maps' agreement
with the Keras model's (`toolkit.runtime.heatmap.agreement`). In the int8 ones the Grad-CAM layer stays
float (`float_scope`): its gradient terms and products span ranges one int8 scale cannot hold. The base
is quantised as in the plain file: keeping its last block float too was measured on the demo run and
moved the maps' p95 difference from Keras by 0.01-0.06 (ONNX int8 0.415 -> 0.352, TFLite int8 0.726 ->
0.731, OpenVINO int8 0.311 -> 0.297) and no lesion hit rate up, for about 15% of VGG16's compute in float:
the blocks below move the map (docs/export.md). Measured: benchmarks/EXPLAIN.md.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable
from pathlib import Path

from toolkit.export.base import ExportContext, ExportFormat, variant_filename, work_dir
from toolkit.facts import HEATMAP_OUTPUT

VARIANT = "heatmap"


def float_scope(layers: Iterable[str] = (HEATMAP_OUTPUT,)) -> str:
    """A regex matching the converted graphs' op names of `layers` (default: the Grad-CAM layer).

    Keras names ops by the layers' scopes ("classifier_1/heatmap_1/Tensordot/MatMul"), and ONNX, TFLite
    and OpenVINO keep those names, so one pattern selects the same layers in each.
    """
    return rf".*/({'|'.join(re.escape(name) for name in layers)})(_\d+)?/.*"


def in_scope(names: Iterable[str], pattern: str) -> list[str]:
    """The node or tensor names among `names` that `pattern` (a `float_scope`) selects: what int8 keeps float."""
    compiled = re.compile(pattern)
    return [name for name in names if compiled.fullmatch(name)]


def heatmap_context(ctx: ExportContext) -> ExportContext:
    """The export context with the two-output model and its facts, made once per export."""
    if VARIANT not in ctx.variants:
        from toolkit.heatmap_model import heatmap_model, heatmap_record

        work = work_dir(ctx) / VARIANT
        work.mkdir(exist_ok=True)
        facts = dataclasses.replace(ctx.facts, extra={**ctx.facts.extra, HEATMAP_OUTPUT: heatmap_record(ctx.model)})
        ctx.variants[VARIANT] = dataclasses.replace(
            ctx,
            model=heatmap_model(ctx.model),
            facts=facts,
            variant=VARIANT,
            scratch={"work": work},
            variants={},
            float_scope=float_scope(),
        )
    variant = ctx.variants[VARIANT]
    variant.calibration = ctx.calibration  # the user's int8 calibration, as the plain artifacts use it
    return variant


def context_for(fmt: ExportFormat, ctx: ExportContext) -> ExportContext:
    """The context a format converts in: the heatmap one for heatmap formats, else the export's own."""
    return heatmap_context(ctx) if fmt.variant == VARIANT else ctx


def _convert(convert, ctx: ExportContext, dest: Path) -> None:
    convert(heatmap_context(ctx), dest)


def heatmap_format(fmt: ExportFormat) -> ExportFormat:
    """The same format, converted from the heatmap model into its own file name."""
    return dataclasses.replace(
        fmt,
        filename=variant_filename(fmt.filename, VARIANT),
        convert=functools.partial(_convert, fmt.convert),
        variant=VARIANT,
        rank_layers=None,
        fix=None,
    )
