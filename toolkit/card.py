"""The model card: RUN/model_card.md and model_card.json, what the model is and how far it can be trusted.

Written by `toolkit train` and rewritten by `toolkit export` and `toolkit bench` from the run
folder's own records (config.json, run.json, labels.json, metrics.json, data_report.json,
export/manifest.json, bench/bench.json), so its figures are those files' figures: data per
split and class with the check's findings and grouping, base and recipe, validation and test
metrics with 95% Clopper-Pearson intervals, the operating point, calibration, and every
artifact's gate result, size and batch-1 latency. The front matter follows Hugging Face's model
card metadata (`model-index` with the test metrics), so the card uploads as it is. Two sections
are the user's (intended use, limitations): their text survives every rewrite.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from toolkit.fileio import write_json_atomic, write_text_atomic
from toolkit.layout import (
    BENCH_DIR,
    BENCH_JSON,
    CONFIG,
    DATA_REPORT,
    EXPORT_DIR,
    LABELS,
    MANIFEST,
    METRICS,
    RUN,
    artifact_name,
)
from toolkit.parity import clopper_pearson

CARD_MD, CARD_JSON = "model_card.md", "model_card.json"
USER_FIELDS = {
    "intended_use": "Intended use",
    "limitations": "Limitations",
}
PLACEHOLDER = "_To be filled in by the model's owner._"
_USER_BLOCK = re.compile(r"<!-- user:(\w+) -->\n(.*?)\n<!-- /user -->", re.S)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _interval(successes: int, n: int) -> list[float] | None:
    return list(clopper_pearson(successes, n)) if n else None


def _split_metrics(m: dict) -> dict:
    """Accuracy, balanced accuracy, AUC, and for two classes sensitivity/specificity, each with its 95% interval."""
    n = int(m["count"])
    out = {
        "images": n,
        "accuracy": m["accuracy"],
        "accuracy_ci95": _interval(round(m["accuracy"] * n), n),
        "balanced_accuracy": m.get("balanced_accuracy"),
        "auc": m.get("auc"),
    }
    if m.get("sensitivity") is not None and m.get("positive_class") in m.get("labels", []):
        labels, cm = m["labels"], m["confusion_matrix"]
        p = labels.index(m["positive_class"])
        positives, caught = sum(cm[p]), cm[p][p]
        negatives = sum(sum(row) for i, row in enumerate(cm) if i != p)
        cleared = sum(row[j] for i, row in enumerate(cm) if i != p for j in range(len(row)) if j != p)
        out |= {
            "sensitivity": m["sensitivity"],
            "sensitivity_ci95": _interval(caught, positives),
            "specificity": m["specificity"],
            "specificity_ci95": _interval(cleared, negatives),
        }
    return out


def _artifacts(manifest: dict | None, bench: dict | None) -> list[dict]:
    latency = {}
    for r in (bench or {}).get("records", []):
        if r.get("batch") == 1:
            latency[r["name"]] = r["p50_ms"]
    rows = []
    for a in (manifest or {}).get("artifacts", []):
        p = a["parity"]
        rows.append({
            "format": a["format"], "precision": " ".join(filter(None, (a["precision"], a.get("variant")))),
            "path": a["path"], "size_mb": a["size_bytes"] / 1e6,
            "gate_passed": p["passed"], "agreement": p["top1_agreement"], "accuracy": p["accuracy"],
            "ece": p.get("ece"), "batch1_p50_ms": latency.get(artifact_name(a)),
        })  # fmt: skip
    return rows


def build_card(run_dir: Path) -> dict:
    """The card's facts, from the run folder's records (module docstring)."""
    config = _read(run_dir / CONFIG) or {}
    run = _read(run_dir / RUN) or {}
    labels = _read(run_dir / LABELS) or {}
    metrics = _read(run_dir / METRICS) or {}
    report = _read(run_dir / DATA_REPORT) or {}
    check = report.get("check") or {}
    card = {
        "name": run_dir.name,
        "model": {
            "base": config.get("base"),
            "image_size": config.get("image_size"),
            "head": config.get("head"),
            "weights": (run.get("weights") or {}).get("source"),
            "labels": labels.get("labels"),
            "recipe": {k: v for k, v in config.items() if k not in ("data_dir", "out", "cache_dir")},
            "best_epoch": run.get("best_epoch"),
        },  # fmt: skip
        "data": {
            "root": report.get("root"),
            "counts": report.get("counts"),
            "selected_on": report.get("val_source"),
            "grouping": config.get("groups") or config.get("group_pattern"),
            "check": {k: check.get(k) for k in ("test_leaks", "leak_counts", "imbalance", "groups", "warnings")}
            if check
            else None,
        },  # fmt: skip
        "metrics": {},
        "operating_point": {k: labels[k] for k in ("positive_class", "threshold", "criterion") if k in labels} or None,
        "calibration": labels.get("score_calibration"),
        "artifacts": _artifacts(_read(run_dir / EXPORT_DIR / MANIFEST), _read(run_dir / BENCH_DIR / BENCH_JSON)),
    }
    if metrics:
        card["metrics"]["validation"] = _split_metrics(metrics)
        if metrics.get("test"):
            card["metrics"]["test"] = _split_metrics(metrics["test"])
        calibration = metrics.get("calibration") or {}
        for split in ("validation", "test"):
            after = (calibration.get(split) or {}).get("after")
            if after and split in card["metrics"]:
                card["metrics"][split]["ece"] = after["ece"]
    return card


def _front_matter(card: dict) -> str:
    import yaml

    test = card["metrics"].get("test")
    results = []
    if test:
        values = [{"type": "accuracy", "value": round(test["accuracy"], 4)}]
        if test.get("auc") is not None:
            values.append({"type": "roc_auc", "value": round(test["auc"], 4)})
        results.append({
            "task": {"type": "image-classification"},
            "dataset": {"name": Path(card["data"]["root"] or "data").name, "type": "imagefolder", "split": "test"},
            "metrics": values,
        })  # fmt: skip
    meta = {
        "library_name": "keras",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "toolkit", str(card["model"]["base"])],
        "model-index": [{"name": card["name"], "results": results}],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _pct(value, ci=None) -> str:
    if value is None:
        return "n/a"
    text = f"{100 * value:.1f}%"
    return text + (f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f}%)" if ci else "")


def render(card: dict, user: dict[str, str]) -> str:
    m, d = card["model"], card["data"]
    lines = [_front_matter(card), f"# {card['name']}", ""]
    lines += [f"Image classifier: {m['base']} base ({m['weights']} weights) at {m['image_size']} px, {m['head']} head; "
              f"labels {', '.join(m['labels'] or [])}. Best epoch {m['best_epoch']}.", ""]  # fmt: skip
    lines += [
        "## Data",
        "",
        "| split | " + " | ".join(m["labels"] or []) + " |",
        "| --- |" + " --- |" * len(m["labels"] or []),
    ]
    for split, counts in (d["counts"] or {}).items():
        lines.append(f"| {split} | " + " | ".join(str(counts.get(c, 0)) for c in m["labels"] or []) + " |")
    lines += ["", f"Validation: {d['selected_on']}. Grouping: {d['grouping'] or 'none (images split one by one)'}."]
    if d["check"]:
        found = d["check"]["warnings"] or ["no duplicates or leaks found"]
        lines += ["", "Data check (`toolkit check`): " + "; ".join(found) + "."]
    lines += ["", "## Metrics (95% Clopper-Pearson intervals)", "",
              "| split | images | accuracy | balanced | AUC | sensitivity | specificity | ECE |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for split, s in card["metrics"].items():
        auc = "n/a" if s.get("auc") is None else f"{s['auc']:.3f}"
        lines.append(
            f"| {split} | {s['images']} | {_pct(s['accuracy'], s['accuracy_ci95'])} | {_pct(s.get('balanced_accuracy'))} "
            f"| {auc} | {_pct(s.get('sensitivity'), s.get('sensitivity_ci95'))} "
            f"| {_pct(s.get('specificity'), s.get('specificity_ci95'))} | {_pct(s.get('ece'))} |"
        )
    op, cal = card["operating_point"], card["calibration"]
    if op:
        how = f"{op['criterion']}, chosen on validation" if op.get("criterion") else "the default threshold"
        lines += ["", f"Operating point: {op['positive_class']} when its probability >= {op['threshold']:.4g} ({how})."]
    if cal:
        text = f"temperature {cal['temperature']:.3f}, fitted on validation" if cal.get("temperature") else "none"
        lines += ["", f"Score calibration: {text}."]
    if card["model"]["recipe"].get("tta"):
        lines += ["", "Test-time augmentation: the model averages 4 flipped views of each image (4x the compute)."]
    if card["artifacts"]:
        lines += ["", "## Artifacts", "", "| format | precision | size MB | gate | agreement | accuracy | ECE | batch-1 ms |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for a in card["artifacts"]:
            ms = "n/a" if a["batch1_p50_ms"] is None else f"{a['batch1_p50_ms']:.1f}"
            lines.append(
                f"| {a['format']} | {a['precision']} | {a['size_mb']:.1f} | {'pass' if a['gate_passed'] else 'FAIL'} "
                f"| {_pct(a['agreement'])} | {_pct(a['accuracy'])} | {_pct(a['ece'])} | {ms} |"
            )
    for key, title in USER_FIELDS.items():
        lines += ["", f"## {title}", "", f"<!-- user:{key} -->", user.get(key, PLACEHOLDER), "<!-- /user -->"]
    return "\n".join(lines) + "\n"


def user_fields(path: Path) -> dict[str, str]:
    """The user's own sections of an existing card (kept on every rewrite)."""
    if not path.is_file():
        return {}
    return {key: text for key, text in _USER_BLOCK.findall(path.read_text()) if key in USER_FIELDS}


def write_model_card(run_dir: str | Path) -> Path:
    """(Re)write RUN/model_card.md and .json from the run folder's records; returns the .md path."""
    run_dir = Path(run_dir)
    card = build_card(run_dir)
    user = user_fields(run_dir / CARD_MD)
    card["user"] = {key: user.get(key, PLACEHOLDER) for key in USER_FIELDS}
    write_json_atomic(run_dir / CARD_JSON, card)
    write_text_atomic(run_dir / CARD_MD, render(card, user))
    return run_dir / CARD_MD
