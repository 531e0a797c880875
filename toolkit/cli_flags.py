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


class PanelledCommand(typer.core.TyperCommand):
    """Plain click help with the options in sections named by their `rich_help_panel`.

    Rich's option table cuts long flag names (`--validate-on-te…`) and breaks choice
    lists at 80 columns; click's definition list puts a long flag on its own line
    instead, so a command with many options (`toolkit train`) reads in a narrow terminal.
    """

    def format_help(self, ctx, formatter) -> None:
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        self.format_options(ctx, formatter)
        self.format_epilog(ctx, formatter)

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            default = "Arguments" if param.param_type_name == "argument" else "Options"
            sections.setdefault(getattr(param, "rich_help_panel", None) or default, []).append(record)
        for name, rows in sections.items():
            with formatter.section(name):
                formatter.write_dl(rows)
