"""The run folder: what training writes, and what export and bench read back.

A run folder is self-contained: `config.json` (the TrainConfig), `labels.json`,
`best.keras`, `history.csv`, `train_state.json` (what resuming needs),
`run.json`, `metrics.json` and plots. Training, export and bench all go through
this module, so export and bench can find a run's images without loading the
training loop.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np

from toolkit.data import ImageArrays, SplitOptions, load_dataset
from toolkit.errors import DatasetError, ModelError
from toolkit.facts import parse_score_calibration
from toolkit.fileio import atomic_path, write_json_atomic, write_text_atomic, write_with
from toolkit.layout import (  # noqa: F401  (the run folder's names, re-exported for its writers)
    BENCH_DIR,
    BENCH_JSON,
    BEST,
    CACHE_DIR,
    CONFIG,
    CURVES,
    DATA_REPORT,
    EXPORT_DIR,
    HISTORY,
    LABELS,
    MANIFEST,
    METRICS,
    RUN,
    STATE,
    manifest_artifacts,
    read_json_file,
)
from toolkit.operating_point import Decision, parse_labels_payload


@dataclasses.dataclass
class TrainState:
    """What must survive a restart: the phase and the best-so-far."""

    phase: str = "frozen"  # frozen -> finetune -> done
    best_value: float | None = None
    best_epoch: int | None = None
    completed_epochs: int = 0

    @classmethod
    def load(cls, path: Path) -> TrainState:
        if not path.is_file():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{path} is damaged ({exc}); start a new run with another --out") from None

    def save(self, path: Path) -> None:
        write_json_atomic(path, self)


# --------------------------------------------------------------------------- history and plots


def write_history_csv(history: list[dict], path: Path) -> None:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(path, buf.getvalue())


def read_history_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [
        {k: (int(v) if k == "epoch" else v if k == "phase" else float(v)) for k, v in row.items() if v != ""}
        for row in rows
    ]


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss, accuracy and AUC per epoch, train and validation, with the fine-tuning start marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy", "auc")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = [row.get(prefix + metric, np.nan) for row in history]
            ax.plot(epochs, values, style, markersize=3, label=("validation" if prefix else "train"))
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fine_tune_start = next((row["epoch"] for row in history if row.get("phase") == "finetune"), None)
    if fine_tune_start is not None:
        for ax in axes:
            ax.axvline(fine_tune_start - 0.5, color="grey", linestyle="--", linewidth=1)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def save_model_atomic(model, dest: Path) -> None:
    """A checkpoint written to a temporary file and renamed: a crash keeps the previous one."""
    with atomic_path(dest, suffix=".keras") as tmp:
        model.save(tmp)


# --------------------------------------------------------------------------- reading a finished run


@dataclasses.dataclass
class RunData:
    """A run's decoded images, split as training split them."""

    train: ImageArrays
    val: ImageArrays


def labels_payload(labels: list[str], decision: Decision | None, score_calibration: dict | None = None) -> dict:
    """labels.json: the class names in output order, for two classes the decision rule, and what was done
    to the scores (`toolkit.calibration`: {"method": "temperature", "temperature": T} or {"method": "none"})."""
    payload: dict = {"labels": labels}
    if decision is not None:
        payload.update(decision.to_json())
    if score_calibration is not None:
        payload["score_calibration"] = score_calibration
    return payload


@dataclasses.dataclass
class RunFolder:
    """A finished run as export and bench see it."""

    path: Path
    config: dict
    labels: list[str]
    decision: Decision | None = None
    score_calibration: dict | None = None  # None: a run made before calibration existed

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def export_dir(self) -> Path:
        return self.path / EXPORT_DIR

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def base(self) -> str:
        """The base network's registry name (runs made before the registry: vgg16)."""
        from toolkit.bases import DEFAULT_BASE

        return str(self.config.get("base", DEFAULT_BASE))

    def load_data(self, data_dir: str | None = None) -> RunData:
        """The run's training and validation images (decoded once, cached inside the run folder).

        Never the test split: export's parity runs on validation and int8 calibrates on train.

        The cache always lives in RUN/cache: a received run's config.json cannot point
        the toolkit at a folder elsewhere.
        """
        folder = data_dir or self.config["data_dir"]
        if not Path(folder).is_dir():
            raise DatasetError(f"the run's data folder {folder} is missing; pass --data DIR with the same classes")
        options = SplitOptions(
            self.config.get("val_split", 0.15),
            self.config.get("test_split", 0.15),
            self.config.get("seed", 0),
            self.config.get("validate_on_test", False),
            self.config.get("groups"),
            self.config.get("group_pattern"),
        )
        data = load_dataset(folder, self.image_size, options, self.path / CACHE_DIR)
        if data.classes != self.labels:
            raise DatasetError(f"classes in {folder} {data.classes} differ from the model's labels {self.labels}")
        return RunData(data.train, data.val)


def check_config(config, path: Path) -> dict:
    """A run's config.json as export and bench need it; damage of any shape is one line naming file and key."""
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a toolkit run config (a JSON object is needed)")
    size = config.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 16:
        raise ModelError(f"{path}: 'image_size' must be an integer of at least 16, got {size!r}")
    if not isinstance(config.get("data_dir"), str):
        raise ModelError(f"{path}: 'data_dir' must be a folder path, got {config.get('data_dir')!r}")
    for key in ("val_split", "test_split", "seed"):
        value = config.get(key, 0)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ModelError(f"{path}: '{key}' must be a number, got {value!r}")
    return config


def load_run(run_dir: str | Path, need_model: bool = True) -> RunFolder:
    """Open a run folder made by `toolkit train`, checking that the files export and bench need are there."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ModelError(f"run folder not found: {path}")
    if need_model and not (path / BEST).is_file():
        raise ModelError(f"{path} has no {BEST}; train first (toolkit train DATA_DIR --out {path})")
    if not (path / LABELS).is_file() or not (path / CONFIG).is_file():
        raise ModelError(f"{path} is not a complete run folder ({LABELS} and {CONFIG} are needed)")
    payload = read_json_file(path / LABELS, "labels file")
    labels, decision = parse_labels_payload(payload, str(path / LABELS))
    config = check_config(read_json_file(path / CONFIG, "run config"), path / CONFIG)
    stored = payload.get("score_calibration") if isinstance(payload, dict) else None
    return RunFolder(path, config, labels, decision, parse_score_calibration(stored, str(path / LABELS)))
