"""The run folder at the start of a run: created with its config.json, or reopened with `--resume`.

A resumed run continues with its stored settings; settings given now that differ
are refused (and listed), never silently ignored, except `--epochs`, which may grow.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.errors import TrainingError
from toolkit.fileio import write_json_atomic
from toolkit.run_folder import BEST, CONFIG, STATE, read_json_file
from toolkit.train.config import TrainConfig


def _resumed_config(config: TrainConfig, saved: Path, explicit: set[str] | None) -> TrainConfig:
    """The stored config, refusing (not ignoring) settings given now that differ from it; --epochs may grow."""
    try:
        raw = read_json_file(saved, "run config")
        if "feature_norm" not in raw:  # stored before the defaults changed (#37): no such layer, auto meant balanced
            raw["feature_norm"] = False
            raw["class_weight"] = {"auto": "balanced"}.get(raw.get("class_weight"), raw.get("class_weight", "none"))
        raw.setdefault("score_calibration", "none")  # stored before calibration (#42) existed
        try:
            stored = TrainConfig.from_flat(**raw)
        except TypeError as exc:
            raise TrainingError(f"{saved} is damaged ({exc}); start a new run with another --out") from None
    except TypeError as exc:
        raise TrainingError(f"{saved} is not a toolkit run config ({exc})") from None
    now, before = config.to_flat(), stored.to_flat()
    names = explicit if explicit is not None else set(now) - {"out"}
    differing = []
    for name in sorted(names - {"epochs", "out"}):
        given, kept = now[name], before[name]
        if name in ("data_dir", "cache_dir") and given and kept:
            given, kept = str(Path(given).resolve()), str(Path(kept).resolve())
        if given != kept:
            differing.append(f"{name} {given} (stored: {kept})")
    if differing:
        raise TrainingError(
            "--resume continues with the run's stored settings, and these differ: "
            + "; ".join(differing)
            + ". Drop them, or start a new run with another --out"
        )
    if explicit is None or "epochs" in explicit:
        stored.optim.epochs = max(stored.optim.epochs, config.optim.epochs)
    return stored


def prepare_run_dir(
    config: TrainConfig, resume: bool, chief: bool, explicit: set[str] | None = None
) -> tuple[Path, TrainConfig]:
    """Create the run folder (or reopen it with `resume`) and store config.json."""
    run_dir = Path(config.out)
    saved = run_dir / CONFIG
    if resume:
        if not saved.is_file():
            raise TrainingError(f"nothing to resume in {run_dir} (no config.json)")
        return run_dir, _resumed_config(config, saved, explicit)
    # A folder "holds a run" once an epoch finished; a start that failed earlier (bad data) is simply redone.
    if (run_dir / BEST).exists() or (run_dir / STATE).exists():
        raise TrainingError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    if chief:
        write_json_atomic(saved, config.to_flat())
    return run_dir, config
