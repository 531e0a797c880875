"""The search's report in RUN/tune: trials.csv (one row per trial), trials.png (score by trial, best so far)
and best.json (the best trial's settings as `toolkit train` flat settings, its score and spread)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from toolkit.fileio import write_json_atomic, write_text_atomic, write_with
from toolkit.tune.space import BASE, NAMES, OBJECTIVE, values_of


def _metric(trial, name: str) -> float:
    metrics = trial.metrics.metrics
    return float(metrics[name].get_best_value()) if name in metrics else math.nan


def trial_rows(tuner, bases: list[str]) -> list[dict]:
    """Every trial, in the order they were created: id, status, score, spread, loss, and its settings."""
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items(), key=lambda kv: int(kv[0])):
        values = trial.hyperparameters.values
        rows.append({
            "trial": trial_id, "status": trial.status, "accuracy": _metric(trial, OBJECTIVE),
            "accuracy_std": _metric(trial, f"{OBJECTIVE}_std"), "log_loss": _metric(trial, "val_loss"),
            **values_of(values, bases),
            "epochs": values.get("tuner/epochs", values.get("epochs")),
        })  # fmt: skip
    return rows


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _plot(rows: list[dict], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if not math.isnan(r["accuracy"])]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = list(range(1, len(done) + 1))
    ax.errorbar(x, [r["accuracy"] for r in done], yerr=[r["accuracy_std"] for r in done], fmt="o", ms=4,
                label="trial (mean ± std over folds)")  # fmt: skip
    best, so_far = -math.inf, []
    for r in done:
        best = max(best, r["accuracy"])
        so_far.append(best)
    ax.step(x, so_far, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("held-out accuracy")
    ax.legend(loc="lower right")
    fig.tight_layout()
    write_with(dest, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def write_report(tuner, config, tune_dir: Path, bases: list[str]) -> dict | None:
    """Write the three files; return best.json's content (None when no trial finished)."""
    rows = trial_rows(tuner, bases)
    write_text_atomic(tune_dir / "trials.csv", _csv(rows))
    _plot(rows, tune_dir / "trials.png")
    finished = [r for r in rows if not math.isnan(r["accuracy"])]
    if not finished:
        return None
    best = max(finished, key=lambda r: (r["accuracy"], -r["log_loss"]))
    chosen = {name: best[name] for name in (*NAMES, BASE) if name in best}  # a heads-only search: no fine-tuning
    settings = {**config.to_flat(), **chosen, "epochs": int(best["epochs"])}
    settings.pop("out", None)
    record = {"settings": settings, "trial": best["trial"], "accuracy": best["accuracy"],
              "accuracy_std": best["accuracy_std"], "log_loss": best["log_loss"], "trials": len(finished)}  # fmt: skip
    write_json_atomic(tune_dir / "best.json", record)
    return record
