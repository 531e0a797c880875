"""`toolkit export RUN --heatmap`: the selected formats once more, from the classifier with a heatmap output.

Each heatmap artifact is its format's own converter run on `toolkit.heatmap_model.heatmap_model` (the
classifier plus Grad-CAM as a second output, in forward ops), written beside the plain artifact under
its own name (`model_float32_heatmap.onnx`, `web-float32-heatmap/`), with the facts record saying where
the maps are (`ModelFacts.heatmap`). The plain artifacts stay single-output, so MediaPipe Tasks and apps
built on them are unaffected. The automatic int8 fix is not applied to heatmap artifacts: they are
explanations beside a shipped model, gated like it on their probabilities and on their maps' agreement
with the Keras model's (`toolkit.runtime.heatmap.agreement`). In the int8 ones the Grad-CAM layer's own
ops (`in_scope`) stay float: its gradient terms and products span ranges one int8 scale cannot hold,
and they cost next to nothing beside the base's convolutions, which are quantised as usual.
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
SCOPE = rf".*/{HEATMAP_OUTPUT}(_\d+)?/.*"  # the Grad-CAM layer's op names in every converted graph (a regex)


def in_scope(names: Iterable[str]) -> list[str]:
    """The node or tensor names among `names` that belong to the Grad-CAM layer: what int8 keeps in float."""
    pattern = re.compile(SCOPE)
    return [name for name in names if pattern.fullmatch(name)]


def heatmap_context(ctx: ExportContext) -> ExportContext:
    """The export context with the two-output model and its facts, made once per export."""
    if VARIANT not in ctx.variants:
        from toolkit.heatmap_model import heatmap_model, heatmap_record

        work = work_dir(ctx) / VARIANT
        work.mkdir(exist_ok=True)
        facts = dataclasses.replace(ctx.facts, extra={**ctx.facts.extra, HEATMAP_OUTPUT: heatmap_record(ctx.model)})
        ctx.variants[VARIANT] = dataclasses.replace(
            ctx, model=heatmap_model(ctx.model), facts=facts, variant=VARIANT, scratch={"work": work}, variants={}
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
