"""`toolkit serve` under load, and `toolkit predict --engine ray` against the local engine, on the demo run.

Load: 16 concurrent tritonclient clients send 50 single-image requests each (binary tensors) to a server
on 127.0.0.1, once with dynamic batching (--max-batch-size 8) and once without (--max-batch-size 1);
p50/p99 latency per request and throughput over the whole run. Clients and server share the machine's
cores, as a sidecar would. Batch: the demo data folder through `toolkit predict --out` with each engine
(Ray: a local cluster, 2 actors), wall time of the whole command, tables compared row for row.
Writes benchmarks/serve.json and benchmarks/SERVE.md.
Usage: python benchmarks/serve.py RUN_DIR DATA_DIR [--model model_int8.onnx] [--clients 16] [--requests 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.serve.conftest import running_server, single_image_requests  # noqa: E402  (the tests' own: one copy)
from toolkit.bench.machine import machine_header  # noqa: E402
from toolkit.runtime import load  # noqa: E402


def load_test(model: Path, pixels: np.ndarray, max_batch: int, clients: int, requests: int) -> dict:
    with running_server(model, "--max-batch-size", str(max_batch), "--max-wait-ms", "5") as server:
        single_image_requests(server.address, server.name, pixels, 4, 0)  # warm-up
        with ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()
            runs = [
                pool.submit(single_image_requests, server.address, server.name, pixels, requests, c)
                for c in range(clients)
            ]
            latencies = [seconds for run in runs for _, _, seconds in run.result()]
            wall = time.perf_counter() - start
        errors = server.metric("toolkit_request_errors_total")
        batches, images = server.metric("toolkit_batch_size_count"), server.metric("toolkit_batch_size_sum")
    ms = sorted(1000 * t for t in latencies)
    return {
        "max_batch_size": max_batch,
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[int(0.99 * (len(ms) - 1))],
        "throughput_rps": len(latencies) / wall,
        "mean_batch": images / batches if batches else 0.0,
    }


def batch_engines(model: Path, data: Path, out_dir: Path) -> dict:
    results = {}
    for engine in ("local", "ray"):
        out = out_dir / f"predictions_{engine}.parquet"
        command = [sys.executable, "-m", "toolkit.cli", "predict", str(model), str(data), "--engine", engine]
        command += ["--out", str(out)] + (["--workers", "2"] if engine == "ray" else [])
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        results[engine] = {"seconds": time.perf_counter() - start, "out": out}
    import pyarrow.parquet as pq

    rows = {engine: pq.read_table(r["out"]).to_pylist() for engine, r in results.items()}
    return {
        "images": len(rows["local"]),
        "identical": rows["local"] == rows["ray"],
        **{f"{engine}_s": r["seconds"] for engine, r in results.items()},
    }


def write_markdown(report: dict, dest: Path) -> None:
    m = report["machine"]
    lines = [
        "# Serving and batch inference",
        "",
        f"`make bench-serve` on {m['cpu']} ({m['cores']} cores; {', '.join(m['instruction_sets'])}), {m['date'][:10]}; model `{report['model']}` "
        f"({report['image_size']} px) of the demo run; server and clients on the same machine.",
        "",
        f"## `toolkit serve`: {report['clients']} clients x {report['requests']} requests, one image each",
        "",
        "| --max-batch-size | requests | errors | p50 ms | p99 ms | throughput (req/s) | mean batch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["load"]:
        lines.append(
            f"| {r['max_batch_size']} | {r['requests']} | {r['errors']:g} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
            f"| {r['throughput_rps']:.1f} | {r['mean_batch']:.2f} |"
        )
    b = report["batch"]
    lines += [
        "",
        f"## `toolkit predict --out`: {b['images']} images, local engine against Ray (local cluster, 2 actors)",
        "",
        "| engine | wall time (s, whole command) | images/s |",
        "| --- | --- | --- |",
        f"| local | {b['local_s']:.1f} | {b['images'] / b['local_s']:.1f} |",
        f"| ray | {b['ray_s']:.1f} | {b['images'] / b['ray_s']:.1f} |",
        "",
        f"Tables identical row for row: {'yes' if b['identical'] else 'NO'}. Ray's time includes starting a local "
        "cluster and its actors (several seconds); its gain is the cluster beyond one machine.",
        "",
    ]
    dest.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--model", default="model_int8.onnx")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    model = args.run_dir / "export" / args.model
    classifier = load(model)
    files = sorted(p for p in (args.data_dir / "test").rglob("*") if p.is_file())
    pixels = np.stack([classifier.preprocess(p) for p in files])
    load_rows = []
    for max_batch in (1, 8):
        load_rows.append(load_test(model, pixels, max_batch, args.clients, args.requests))
        print(json.dumps(load_rows[-1]))
    batch = batch_engines(model, args.data_dir, args.run_dir / "bench")
    print(json.dumps(batch))
    report = {
        "machine": machine_header(0),
        "model": args.model,
        "image_size": classifier.image_size[0],
        "clients": args.clients,
        "requests": args.requests,
        "load": load_rows,
        "batch": batch,
    }
    here = Path(__file__).resolve().parent
    (here / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, here / "SERVE.md")


if __name__ == "__main__":
    main()
