"""Every CLI option's default and choices come from the library: one home for each fact."""

from __future__ import annotations

import dataclasses
import typing
from enum import StrEnum

import pytest
import typer.core
import typer.main

from toolkit.batch import BatchOptions, Engine
from toolkit.bench.types import BenchFormat, BenchOptions
from toolkit.calibration import ScoreCalibration
from toolkit.cli import app
from toolkit.data.check import CheckOptions
from toolkit.data.demo import DemoDataConfig
from toolkit.data.folders import SplitOptions
from toolkit.evaluate import EvaluateOptions
from toolkit.export.base import Calibration, ExportTarget, Precision
from toolkit.export.pipeline import ExportOptions
from toolkit.hardware import BasePrecision, Strategy
from toolkit.model import Head
from toolkit.parity import ParityOverrides
from toolkit.runtime import LoadOptions, PredictOptions
from toolkit.runtime.base import Device, PixelScale
from toolkit.serve import ServeOptions
from toolkit.train.config import BaseConfig, ClassWeight, DataConfig, Monitor, OptimConfig, Schedule, TrainConfig
from toolkit.tune import TuneOptions, TunerKind

# Options that belong to the command line alone (where output goes, how it is shown), not to the library.
CLI_ONLY = {"out", "quiet", "json_output", "resume", "help", "settings_file"}
TRAIN_CALL = {"wait"}  # train(..., wait=): how to run, not what the run is (config.json stores no such field)

# command -> {parameter: (dataclass, field)} where the names differ or the owner is not the command's own options
RENAMED = {
    "demo-data": {"image_size": (DemoDataConfig, "size")},
    "export": {
        "precision": (ExportOptions, "precisions"),
        "data": (ExportOptions, "data_dir"),
        "max_diff": (ParityOverrides, "max_abs_diff"),
        "min_agreement": (ParityOverrides, "min_agreement"),
        "max_accuracy_drop": (ParityOverrides, "max_accuracy_drop"),
        "max_ece_increase": (ParityOverrides, "max_ece_increase"),
        "max_map_diff": (ParityOverrides, "max_map_diff"),
    },
    "tune": {
        "time_budget": (TuneOptions, "time_budget_s"),
        "base": (BaseConfig, "name"),
        "image_size": (BaseConfig, "image_size"),
        "weights": (BaseConfig, "weights"),
        "val_split": (DataConfig, "val_split"),
        "groups": (DataConfig, "groups"),
        "group_pattern": (DataConfig, "group_pattern"),
        "cache_dir": (DataConfig, "cache_dir"),
        "seed": (OptimConfig, "seed"),
    },
    "bench": {
        "format": (BenchOptions, "formats"),
        "precision": (BenchOptions, "precisions"),
        "batch_size": (BenchOptions, "batches"),
        "data": (BenchOptions, "data_dir"),
    },
}
OWNERS = {
    "train": [TrainConfig],
    "demo-data": [DemoDataConfig],
    "export": [ExportOptions],
    "bench": [BenchOptions],
    "predict": [PredictOptions, LoadOptions, BatchOptions],
    "serve": [ServeOptions],
    "evaluate": [EvaluateOptions, LoadOptions],
    "check": [CheckOptions, SplitOptions],
    "tune": [TuneOptions],
}
CHOICES = {
    ("train", "base_precision"): BasePrecision,
    ("train", "head"): Head,
    ("train", "monitor"): Monitor,
    ("train", "class_weight"): ClassWeight,
    ("train", "fine_tune_schedule"): Schedule,
    ("train", "strategy"): Strategy,
    ("train", "score_calibration"): ScoreCalibration,
    ("export", "format"): ExportTarget,
    ("export", "calibration"): Calibration,
    ("predict", "device"): Device,
    ("predict", "pixel_scale"): PixelScale,
    ("predict", "engine"): Engine,
    ("serve", "device"): Device,
    ("evaluate", "device"): Device,
    ("bench", "device"): Device,
    ("tune", "tuner"): TunerKind,
}
LISTED = {("export", "precision"): Precision, ("bench", "precision"): Precision, ("bench", "format"): BenchFormat}


def _field_default(cls, name: str):
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()


def _expected_default(command: str, name: str):
    if command == "train":
        name = {"base_precision": "precision"}.get(name, name)
        return TrainConfig.flat_default(name)
    cls, field = _owner(command, name)
    return _field_default(cls, field)


def _owner(command: str, name: str):
    if name in RENAMED.get(command, {}):
        return RENAMED[command][name]
    for cls in OWNERS[command]:
        if name in {f.name for f in dataclasses.fields(cls)}:
            return cls, name
    raise AssertionError(f"{command} --{name} has no library home for its default")


def _commands() -> dict:
    return typer.main.get_command(app).commands


@pytest.mark.parametrize("command", sorted(OWNERS))
def test_every_option_default_is_the_library_default(command):
    checked = 0
    for param in _commands()[command].params:
        if not isinstance(param, typer.core.TyperOption) or param.name in CLI_ONLY:
            continue
        if command == "train" and param.name in TRAIN_CALL:
            import inspect

            from toolkit.train.loop import train

            assert param.default == inspect.signature(train).parameters[param.name].default
            continue
        expected = _expected_default(command, param.name)
        if command == "bench" and param.name == "batch_size":
            expected = ",".join(map(str, expected))
        shown = param.default.value if isinstance(param.default, StrEnum) else param.default
        assert shown == expected, (command, param.name, shown, expected)
        checked += 1
    assert checked >= 3


def test_every_choice_list_is_the_library_enum():
    commands = _commands()
    for (command, name), enum in CHOICES.items():
        param = next(p for p in commands[command].params if p.name == name)
        annotation = param.type_descriptor.annotation
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
        assert kinds == [enum], (command, name, annotation)  # the library's enum itself, not a copy


def test_fine_tune_from_help_lists_every_base_cut_from_the_records():
    from toolkit.bases import base_names, get_base

    param = next(p for p in _commands()["train"].params if p.name == "fine_tune_from")
    for name in base_names():
        assert f"{name}: {', '.join(get_base(name).cuts)}" in param.help


def test_comma_separated_options_check_against_the_library_enum():
    from typer.testing import CliRunner

    for (command, name), enum in LISTED.items():
        flag = "--" + name.replace("_", "-")
        result = CliRunner().invoke(app, [command, "x", flag, "bogus"])
        assert result.exit_code == 2
        text = " ".join(result.output.replace("│", " ").split())
        assert ", ".join(enum) in text, result.output


def test_no_vocabulary_is_written_twice_in_the_library():
    """The tuples that used to shadow the CLI's enums are gone; the enums are the only lists."""
    import toolkit.export.pipeline as pipeline
    import toolkit.hardware as hardware
    import toolkit.model as model
    import toolkit.train.config as config

    for module, names in (
        (hardware, ("PRECISIONS", "STRATEGIES")),
        (model, ("HEADS",)),
        (config, ("SCHEDULES", "CLASS_WEIGHTS")),
        (pipeline, ("FORMAT_CHOICES", "PRECISIONS")),
    ):
        for name in names:
            assert not hasattr(module, name), f"{module.__name__}.{name}"
    assert TrainConfig.flat_default("val_split") == _field_default(
        __import__("toolkit.data", fromlist=["SplitOptions"]).SplitOptions, "val_split"
    )
