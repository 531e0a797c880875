"""The model-facts record: what a model file says about itself, the same in every artifact.

One record, written by export into every artifact (ONNX `metadata_props`, a file packed into
the TFLite metadata, OpenVINO `rt_info`, the web bundle's `bundle.json`) and into the
manifest entry beside it, and read back by the runtime from the file alone. A `.tflite`
copied into an app without its manifest still knows its labels and operating point.

`score_calibration` says what was done to the scores: {"method": "temperature", "temperature": T,
"fitted_on": "validation"} (folded into the last layer, so the outputs already are calibrated),
{"method": "none"}, or null for a model exported before calibration existed.
`extra` is room for what later features add (extra outputs); readers ignore keys they do not
know, so an older runtime still loads a newer record.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from toolkit.errors import RuntimeModelError

FACTS_KEY = "toolkit_facts"  # the key (ONNX, OpenVINO, bundle.json) or file name stem (TFLite) of the record
FACTS_FILE = f"{FACTS_KEY}.json"
SCHEMA = 1
RAW_PIXELS = "0..255"
OUTPUT_PROBABILITIES = "softmax probabilities, one per label, in label order"
HEATMAP_OUTPUT = "heatmap"  # the second output of a heatmap artifact, and its key in `ModelFacts.extra`


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """The pixels a model takes: RGB, NHWC, at this size and range (normalisation is inside the model)."""

    height: int
    width: int
    channels: int = 3
    pixel_range: str = RAW_PIXELS
    layout: str = "NHWC"

    @classmethod
    def square(cls, size: int) -> InputSpec:
        return cls(int(size), int(size))


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    labels: tuple[str, ...]
    input: InputSpec
    decision: dict | None  # two classes: {"positive_class", "threshold", "criterion"}
    preprocessing: str
    toolkit_version: str
    base: str = "vgg16"
    output: str = OUTPUT_PROBABILITIES
    source_sha256: str | None = None  # the best.keras the artifact was converted from
    content_sha256: str | None = None  # this file's content, the record excluded (`toolkit.runtime.digest`)
    score_calibration: dict | None = None  # what was done to the scores (module docstring)
    extra: dict = dataclasses.field(default_factory=dict)
    schema: int = SCHEMA

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        return data

    def dumps(self) -> str:
        """The record as stored in a file: compact, keys sorted, so equal records are equal bytes."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    def shared(self) -> dict[str, Any]:
        """The record without this file's own digest: what every artifact of one export has in common."""
        return {k: v for k, v in self.to_json().items() if k != "content_sha256"}

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.input.height, self.input.width)

    @property
    def calibrated(self) -> bool:
        """Whether the probabilities were calibrated (a temperature folded into the model)."""
        return bool(self.score_calibration) and self.score_calibration.get("method") == "temperature"

    @property
    def score_note(self) -> str:
        """What the probabilities are, in a few words, for people who read them beside a label."""
        if self.calibrated:
            return f"calibrated (temperature {self.score_calibration['temperature']:.2f}, fitted on validation)"
        if self.score_calibration is None:
            return "calibration unknown (exported before calibration was recorded)"
        return "not calibrated"

    @property
    def heatmap(self) -> dict | None:
        """The heatmap output's record (`toolkit.heatmap_model.heatmap_record`), or None for a single-output model."""
        value = self.extra.get(HEATMAP_OUTPUT)
        return value if isinstance(value, dict) else None

    @classmethod
    def from_json(cls, data: Any, where: str) -> ModelFacts:
        """Parse a stored record; a record of the wrong shape is a one-line error naming `where`."""
        try:
            if not isinstance(data, dict):
                raise TypeError("not an object")
            spec = data["input"]
            facts = cls(
                labels=tuple(str(label) for label in data["labels"]),
                input=InputSpec(
                    int(spec["height"]),
                    int(spec["width"]),
                    int(spec.get("channels", 3)),
                    str(spec.get("pixel_range", RAW_PIXELS)),
                    str(spec.get("layout", "NHWC")),
                ),
                decision=_decision(data.get("decision")),
                preprocessing=str(data.get("preprocessing", "")),
                toolkit_version=str(data.get("toolkit_version", "")),
                base=str(data.get("base", "vgg16")),
                output=str(data.get("output", OUTPUT_PROBABILITIES)),
                source_sha256=data.get("source_sha256"),
                content_sha256=data.get("content_sha256"),
                score_calibration=parse_score_calibration(data.get("score_calibration"), where),
                extra=dict(data.get("extra") or {}),
                schema=int(data.get("schema", SCHEMA)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RuntimeModelError(
                f"{where}: the model-facts record is damaged ({exc.__class__.__name__}: {exc})"
            ) from None
        if not facts.labels or facts.input.height < 1 or facts.input.width < 1:
            raise RuntimeModelError(f"{where}: the model-facts record has no labels or no input size")
        return facts

    @classmethod
    def loads(cls, text: str | bytes, where: str) -> ModelFacts:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RuntimeModelError(f"{where}: the model-facts record is not JSON ({exc})") from None
        return cls.from_json(data, where)


def parse_score_calibration(value: Any, where: str) -> dict | None:
    """A stored score-calibration record, checked: None, {"method": "none"} or a positive finite temperature."""
    if value is None:
        return None
    method = value.get("method") if isinstance(value, dict) else None
    if method == "none":
        return dict(value)
    temperature = value.get("temperature") if isinstance(value, dict) else None
    if (
        method != "temperature"
        or not isinstance(temperature, int | float)
        or isinstance(temperature, bool)
        or not 0 < temperature < float("inf")
    ):
        raise RuntimeModelError(
            f"{where}: score_calibration must be {{'method': 'none'}} or {{'method': 'temperature', "
            f"'temperature': T > 0}}, got {value!r}"
        )
    return dict(value)


def _decision(value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or "positive_class" not in value or "threshold" not in value:
        raise ValueError("decision needs positive_class and threshold")
    return dict(value)
