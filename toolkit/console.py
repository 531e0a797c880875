"""Tables the command line prints: exports with their parity, benchmark rows. Rich on a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from toolkit.bench import BenchReport, best_rows


def print_export_table(manifest: dict) -> None:
    table = Table(title="exports (parity against the Keras model)")
    for column in ("format", "precision", "size (MB)", "max diff", "agreement", "accuracy", "keras acc", "parity"):
        table.add_column(column, justify="right" if column not in ("format", "precision") else "left")
    for a in manifest.get("artifacts", []):
        p = a["parity"]
        table.add_row(
            a["format"],
            a["precision"],
            f"{a['size_bytes'] / 1e6:.1f}",
            f"{p['max_abs_diff']:.1e}",
            f"{p['top1_agreement']:.1%}",
            f"{p['accuracy']:.1%}",
            f"{p['reference_accuracy']:.1%}",
            "[green]pass[/green]" if p["passed"] else "[red]FAIL[/red]",
        )
    Console(width=max(Console().width, 110)).print(table)


def print_bench_report(console: Console, report: BenchReport, batches: tuple[int, ...]) -> None:
    """The machine line, the float32 floor, then one table per batch size."""
    m = report.machine
    console.print(
        f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, GPU: {m['gpu'] or 'none'}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    )
    console.print(
        f"float32 matrix peak (numpy {m['fp32_matmul_size']}x{m['fp32_matmul_size']} sgemm, this run): "
        f"{m['fp32_matmul_peak_gflops']:.0f} GFLOP/s; model: {m['model_gflop_per_image']:.2f} GFLOP per image, "
        f"so the float32 floor is {m['fp32_floor_ms']:.0f} ms per image"
    )
    for b in batches:
        fastest, best_accurate = best_rows(report.records, b)
        table = Table(title=f"batch {b}")
        for column in (
            "backend",
            "provider",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "img/s",
            "load s",
            "peak MB",
            "size MB",
            "accuracy",
            "vs keras",
            "GFLOP/s",
            "% peak",
        ):
            table.add_column(column, justify="left" if column in ("backend", "provider") else "right")
        for r in (r for r in report.records if r.batch == b):
            provider = (
                r.provider
                if r.requested_device == r.provider
                else f"{r.provider} (asked {r.requested_device}; fell back)"
            )
            style = "bold green" if r is fastest else "bold cyan" if r is best_accurate else None
            table.add_row(
                r.name,
                provider,
                f"{r.p50_ms:.1f}",
                f"{r.p90_ms:.1f}",
                f"{r.p99_ms:.1f}",
                f"{r.throughput_ips:.1f}",
                f"{r.load_s:.2f}",
                f"{r.peak_rss_mb:.0f}",
                f"{r.size_mb:.1f}",
                "n/a" if r.accuracy is None else f"{r.accuracy:.1%}",
                "" if r.speedup_vs_keras is None else f"{r.speedup_vs_keras:.2f}x",
                f"{r.gflops:.0f}",
                f"{r.percent_of_peak:.0f}%",
                style=style,
            )
        console.print(table)
    console.print("[bold green]green[/]: fastest; [bold cyan]cyan[/]: fastest within 1 point of the best accuracy")
    if report.out_dir:
        console.print(f"wrote {report.out_dir}/bench.json, bench.csv, bench.png")
