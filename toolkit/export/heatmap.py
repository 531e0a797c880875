"""`toolkit export RUN --heatmap`: the selected formats once more, from the classifier with a heatmap output.

Each heatmap artifact is its format's own converter run on `toolkit.heatmap_model.heatmap_model` (the
classifier plus Grad-CAM as a second output, in forward ops), written beside the plain artifact under
its own name (`model_float32_heatmap.onnx`, `web-float32-heatmap/`), with the facts record saying where
the maps are (`ModelFacts.heatmap`). The plain artifacts stay single-output, so MediaPipe Tasks and apps
built on them are unaffected. The automatic int8 fix is not applied to heatmap artifacts: they are
explanations beside a shipped model, gated like it on their probabilities and on their maps' agreement
with the Keras model's (`toolkit.runtime.heatmap.agreement`). In the int8 and dynamic ones the Grad-CAM
layer and the head stay float (`MAP_SCOPE`): the layer's gradient terms and products span ranges one int8
scale cannot hold, and the channel weights are the head's gradient, switched by its hidden ReLU, so the
head's int8 activations moved the maps most: on the demo run (mlp head, AMX Xeon, 2026-12-07) the p95
map difference from Keras went from 0.43 to 0.23 (ONNX int8), 0.59 to 0.28 (TFLite int8) and 0.58 to 0.22
(TFLite dynamic), inside their bounds, for a head of 0.5 M multiply-adds beside VGG16's 15 G. The base is
quantised as in the plain file: keeping its last block float too moved the maps by 0.01-0.06 and no
lesion hit rate up, for about 15% of VGG16's compute in float (docs/export.md, benchmarks/EXPLAIN.md).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable
from pathlib import Path

from toolkit.export.base import ExportContext, ExportFormat, variant_filename, work_dir
from toolkit.facts import HEATMAP_OUTPUT
from toolkit.model import HEAD_LAYER

VARIANT = "heatmap"


def float_scope(layers: Iterable[str] = (HEATMAP_OUTPUT,)) -> str:
    """A regex matching the converted graphs' op names of `layers` (default: the Grad-CAM layer).

    Keras names ops by the layers' scopes ("classifier_1/heatmap_1/Tensordot/MatMul"), and ONNX, TFLite
    and OpenVINO keep those names, so one pattern selects the same layers in each.
    """
    return rf".*/({'|'.join(re.escape(name) for name in layers)})(_\d+)?/.*"


MAP_SCOPE = float_scope((HEATMAP_OUTPUT, HEAD_LAYER))  # what a quantised heatmap artifact keeps float


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
            float_scope=MAP_SCOPE,
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
