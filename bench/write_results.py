"""Write bench/RESULTS.md from a run's bench.json and cold_start.json (the table, the machine, the date, the command)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run_dir: Path, command: str) -> None:
    bench = json.loads((run_dir / "bench" / "bench.json").read_text())
    cold = json.loads((run_dir / "bench" / "cold_start.json").read_text())
    m = bench["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['threads']} threads used), GPU: {m['gpu'] or 'none'}; "
        f"{m['platform']}, Python {m['python']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"Date: {m['date']}. Command: `{command}`.",
        "",
        "| backend | provider | batch | p50 ms | p90 ms | p99 ms | img/s | load s | peak MB | size MB | accuracy | vs keras |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in bench["records"]:
        speed = "" if r["speedup_vs_keras"] is None else f"{r['speedup_vs_keras']:.2f}x"
        lines.append(
            f"| {r['name']} | {r['provider']} | {r['batch']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['throughput_ips']:.1f} | {r['load_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['size_mb']:.1f} "
            f"| {100 * r['accuracy']:.1f}% | {speed} |"
        )
    lines += [
        "",
        "Cold start of `toolkit predict MODEL IMAGE --json` (whole process, median of 5):",
        "",
        "| artifact | median s | min s | max s |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {c['artifact']} | {c['median_s']:.3f} | {c['min_s']:.3f} | {c['max_s']:.3f} |" for c in cold]
    Path("bench/RESULTS.md").write_text("\n".join(lines) + "\n")
    print("wrote bench/RESULTS.md")


if __name__ == "__main__":
    main(Path(sys.argv[1]), " ".join(sys.argv[2:]))
