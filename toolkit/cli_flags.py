"""The option types several commands share, and the helper that turns parameters into a library options object.

A module of its own so that `cli.py` (training, export, bench) and `cli_runtime.py`
(predict, serve) declare the same flag the same way.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Annotated

import typer

from toolkit.runtime.base import Device

Opt, Arg = typer.Option, typer.Argument  # short names keep each option on one line

JsonFlag = Annotated[bool, Opt("--json", help="Print the result as JSON (no progress output).")]
QuietFlag = Annotated[bool, Opt(help="No progress output.")]
DeviceFlag = Annotated[Device, Opt(help="Where inference runs (cuda: ONNX only).")]
ThreadsFlag = Annotated[int | None, Opt(min=1, help="Intra-op threads (default: all cores).")]
VerifyFlag = Annotated[bool, Opt("--verify/--no-verify", help="Check the sha256 in a manifest beside it.")]
ExternalData = Annotated[bool, Opt(help="Let an ONNX model read data files beside it.")]
ImageSize = Annotated[int, Opt(min=16, help="Square image side in pixels.")]
WaitFlag = Annotated[bool, Opt(help="If another process writes the same folder, wait for it (default: exit 2).")]


def options_from(cls, params: dict, **overrides):
    """A library options dataclass from the command's parameters of the same names (enums as their values)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: (v.value if isinstance(v, Enum) else v) for k, v in params.items() if k in names}
    return cls(**{**values, **overrides})
