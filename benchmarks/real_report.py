"""benchmarks/REAL.md from real.json: one section per ELPV task, its artifacts, the published rows, the targets
and every recipe the task has run (benchmarks/real.py writes the JSON)."""

from __future__ import annotations

from pathlib import Path

from elpv import GRADES


def _pct(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}%}"


def summary(result: dict) -> dict:
    """One line of a task's 'tried' table: what a run of this benchmark reached."""
    by_name = {f"{r['format']} {r['precision']}": r for r in result["artifacts"]}
    keras = by_name["keras float32"]
    return {
        "date": result["date"],
        "machine": result["machine"].split(",")[0],
        "recipe": " ".join(result["recipe"]),
        "keras_accuracy": keras["accuracy"],
        "balanced_accuracy": keras["balanced_accuracy"],
        "sensitivity": keras["sensitivity"],
        "int8_accuracy": {k: r["accuracy"] for k, r in by_name.items() if r["precision"] == "int8"},
        "train_minutes": result["train_seconds"] / 60,
    }


def tried(previous: dict, result: dict) -> list[dict]:
    """Every recipe a task has run, oldest first, the current one last (a rerun on one day replaces its line)."""
    rows = list(previous.get("tried", []))
    if "artifacts" in previous and summary(previous) not in rows:
        rows.append(summary(previous))
    now = summary(result)
    rows = [r for r in rows if (r["date"], r["recipe"]) != (now["date"], now["recipe"])]
    return [*rows, now]


def _artifact_rows(result: dict) -> list[str]:
    binary = result["artifacts"][0].get("sensitivity") is not None
    order = list(GRADES.values())  # the 4-level task's classes by defect probability; others as they come
    recall = result["artifacts"][0].get("recall", {})
    classes = [] if binary else sorted(recall, key=lambda c: (order.index(c) if c in order else len(order), c))
    extra = ["AUC", "sensitivity", "specificity"] if binary else [f"recall {c}" for c in classes]
    head = ["model", "test accuracy (95% CI)", "balanced acc.", *extra, "size MB", "batch-1 ms", "parity gate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["artifacts"]:
        ci = r.get("accuracy_ci95")
        accuracy = _pct(r["accuracy"]) + (f" ({ci[0]:.1%}-{ci[1]:.1%})" if ci else "")
        if binary:
            cells = [f"{r['auc']:.3f}" if r["auc"] is not None else "", _pct(r["sensitivity"]), _pct(r["specificity"])]
        else:
            cells = [_pct(r["recall"][c]) for c in classes]
        ms = r.get("latency_ms")
        gate = "pass" if r["parity_passed"] else "FAIL"
        row = [f"{r['format']} {r['precision']}", accuracy, _pct(r["balanced_accuracy"]), *cells]
        lines.append("| " + " | ".join([*row, f"{r['size_mb']:.1f}", "" if ms is None else f"{ms:.1f}", gate]) + " |")
    for p in result["published"]:
        lines.append("| " + " | ".join([p["name"], _pct(p["accuracy"], 2), *[""] * (len(head) - 2)]) + " |")
    return lines


def _tried_rows(rows: list[dict]) -> list[str]:
    lines = [
        "Recipes tried on this task:",
        "",
        "| date | machine | recipe (`toolkit train DATA ...`) | Keras test acc. | balanced acc. | sensitivity "
        "| int8 test acc. | training min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        int8 = ", ".join(f"{k.split()[0]} {v:.1%}" for k, v in r["int8_accuracy"].items())
        lines.append(
            f"| {r['date']} | {r['machine']} | `{r['recipe']}` | {r['keras_accuracy']:.1%} | "
            f"{_pct(r.get('balanced_accuracy'))} | {_pct(r['sensitivity'])} | {int8} | {r['train_minutes']:.0f} |"
        )
    return lines


def section(result: dict) -> list[str]:
    """One task: how it was run, its table, its targets, its history."""
    reused = f" ({result['reused']} reused from an earlier invocation)" if result.get("reused") else ""
    targets = result.get("targets")
    if targets is None:  # the one-task layout of earlier runs
        targets = {"int8 ONNX and TFLite >= 88.4% test accuracy, passing the gate": result["target_met"]}
    lines = [
        f"## {result['task']}: {result['title']}",
        "",
        f"Written by `{result['command']}` on {result['date']}; machine: {result['machine']}.",
        f"Data: {result['data']['train']} training cells (validation carved from them), {result['data']['test']} "
        f"test cells. Recipe: `toolkit train DATA {' '.join(result['recipe'])}` (weights: {result['weights']}); "
        f"training {result['train_seconds'] / 60:.1f} min"
        + (f"; export `{result['export']}` {result['export_seconds'] / 60:.1f} min" if result.get("export") else "")
        + f"; this invocation {result['total_seconds'] / 60:.1f} min{reused}.",
        "",
        *_artifact_rows(result),
        "",
    ]
    lines += [f"Target: {name}: **{'met' if met else 'not met'}**." for name, met in targets.items()]
    return [*lines, "", *_tried_rows(result.get("tried", [])), ""]


def write_report(results: dict, order: list[str], out_md: Path) -> None:
    lines = [
        "# Real data: ELPV solar cells",
        "",
        "`make bench-real` (benchmarks/real.py): the bench's recipe (`RECIPE` in real.py) trained on the ELPV cells (Deitsch et al., "
        "Solar Energy 2019; CC BY-NC-SA 4.0, downloaded into a cache, never committed), every artifact exported "
        "behind its parity gate and scored on the held-out test cells. The per-cell split is the paper's "
        "(`benchmarks/elpv_split.csv`); the module split keeps each 60-cell module on one side "
        "(`benchmarks/elpv_module_split.csv`, validation carved by module with `--groups`). Accuracy intervals: "
        "95% Clopper-Pearson.",
        "",
    ]
    for name in order:
        lines += section(results[name])
    out_md.write_text("\n".join(lines))
