from __future__ import annotations

import csv
import json

import pytest

from toolkit.bench import BenchOptions, BenchTarget, best_rows, run_bench, run_worker


def test_quick_bench_writes_records_files_and_machine_header(exported_run):
    options = BenchOptions(
        formats=["keras", "tflite"], precisions=["float32", "int8"], batches=(1, 2), warmup=1, runs=3, threads=1
    )
    report = run_bench(exported_run, [], options)
    names = {r.name for r in report.records}
    assert names == {"keras float32", "tflite float32", "tflite int8"}
    assert len(report.records) == 6
    for r in report.records:
        assert r.runs == 3 and 0 < r.p50_ms <= r.p99_ms and r.throughput_ips > 0
        assert r.peak_rss_mb > 0 and r.size_mb > 0 and 0 <= r.accuracy <= 1
        assert r.provider == "cpu" and r.speedup_vs_keras is not None
        peak = report.machine["peaks"][r.floor_precision]["gflops"]  # the row's own precision's peak
        assert r.gflops > 0 and r.percent_of_peak == pytest.approx(100 * r.gflops / peak)
        assert r.floor_precision == ("int8" if r.precision == "int8" else "fp32")
    keras = [r for r in report.records if r.backend == "keras"]
    assert all(r.speedup_vs_keras == pytest.approx(1.0) for r in keras)
    manifest = json.loads((exported_run / "export" / "manifest.json").read_text())
    int8 = next(a for a in manifest["artifacts"] if a["path"] == "model_int8.tflite")
    assert next(r for r in report.records if r.name == "tflite int8").accuracy == pytest.approx(
        int8["parity"]["accuracy"]
    )
    out = exported_run / "bench"
    saved = json.loads((out / "bench.json").read_text())
    assert saved["machine"]["cores"] and saved["machine"]["versions"]["onnxruntime"]
    assert saved["machine"]["model_gflop_per_image"] > 0
    assert {"fp32", "int8"} <= set(saved["machine"]["peaks"])  # bf16 too where the CPU has it natively
    assert all(peak["gflops"] > 1 for peak in saved["machine"]["peaks"].values())
    recommended = saved["recommendation"]  # tflite rows only here: the fastest of those that passed their gate
    gated = [r for r in report.records if r.batch == 1 and r.backend != "keras" and r.gate_passed]
    assert recommended["name"] == min(gated, key=lambda r: r.p50_ms).name and recommended["passed_gate"]
    assert len(saved["records"]) == 6
    with open(out / "bench.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    fastest, accurate = best_rows(report.records, 1)
    assert fastest.p50_ms == min(r.p50_ms for r in report.records if r.batch == 1)


def test_cuda_row_that_falls_back_is_labelled_cpu(exported_run, tmp_path):
    """Ask for CUDA on a machine without it: the worker reports the provider that really ran."""
    import numpy as np

    from toolkit.data import SplitOptions, discover_dataset, load_split_images

    split = discover_dataset(
        json.loads((exported_run / "config.json").read_text())["data_dir"], SplitOptions(val_split=0.25, seed=1)
    )
    val = load_split_images(split.val, (32, 32), None)
    np.savez(tmp_path / "images.npz", images=val.images, labels=val.labels)
    target = BenchTarget(
        "onnx float32 (cuda)", "onnx", str(exported_run / "export" / "model_float32.onnx"), "float32", device="cuda"
    )
    records = run_worker(
        {
            "target": target.__dict__,
            "threads": 1,
            "images": str(tmp_path / "images.npz"),
            "batches": [1],
            "warmup": 0,
            "runs": 2,
            "seconds": None,
        }
    )
    import onnxruntime as ort

    expected = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    assert records[0]["requested_device"] == "cuda" and records[0]["provider"] == expected


def test_keras_bf16_row_where_the_cpu_supports_it(exported_run):
    from toolkit.hardware import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("needs a CPU with AVX512_BF16 or AMX (native bf16); this one has neither")
    report = run_bench(exported_run, [], BenchOptions(formats=["keras"], batches=(1,), warmup=1, runs=2, threads=1))
    rows = {r.precision: r for r in report.records}
    assert set(rows) == {"float32", "bf16"}
    assert abs(rows["bf16"].accuracy - rows["float32"].accuracy) <= 0.25  # 8 images on a random-weight model


def test_bench_refuses_manifest_paths_outside_the_export_folder(exported_run, tmp_path):
    import shutil

    from toolkit.errors import BenchError

    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("cache", "bench"))
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    manifest["artifacts"][0]["path"] = "../../../../etc/passwd.onnx"
    (run / "export" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BenchError, match="outside"):
        run_bench(run, [], BenchOptions(formats=["onnx"], batches=(1,), runs=1))


def test_device_cuda_without_a_cuda_provider_is_refused_before_any_work(exported_run):
    from toolkit.bench.targets import cuda_available
    from toolkit.errors import BenchError

    if cuda_available():
        pytest.skip("needs a machine without a CUDA GPU (this one has the CUDA provider)")
    with pytest.raises(BenchError, match="no CUDA provider"):
        run_bench(exported_run, [], BenchOptions(device="cuda", batches=(1,), runs=1))


def test_bench_scores_at_the_operating_point_as_evaluate_does(exported_run, tmp_path):
    """A file whose record moves the threshold: bench's accuracy is evaluate's, not argmax's."""
    import numpy as np
    import onnx

    from tests.conftest import validation_folder
    from toolkit.evaluate import evaluate_model
    from toolkit.facts import FACTS_KEY
    from toolkit.runtime import load

    folder = validation_folder(exported_run, tmp_path / "val")
    source = exported_run / "export" / "model_float32.onnx"
    reference = evaluate_model(load(source), folder)
    probs = load(source).predict_files(sorted(folder.rglob("*.jpg")))
    positive = np.array([p.probabilities["malignant"] for _, p, _ in probs])
    model = onnx.load(str(source))
    entry = next(e for e in model.metadata_props if e.key == FACTS_KEY)
    facts = json.loads(entry.value)
    argmax_accuracy = reference.metrics.accuracy
    for threshold in np.quantile(positive, [0.2, 0.35, 0.65, 0.8]):  # the record's digest excludes the record
        facts["decision"]["threshold"] = float(threshold)
        entry.value = json.dumps(facts)
        moved = tmp_path / "moved" / "model.onnx"
        moved.parent.mkdir(exist_ok=True)
        onnx.save(model, str(moved))
        expected = evaluate_model(load(moved), folder).metrics
        if expected.accuracy != argmax_accuracy:
            break
    assert expected.accuracy != argmax_accuracy  # so the check below could fail
    options = BenchOptions(batches=(1,), warmup=0, runs=1, threads=1, data_dir=str(folder))
    record = run_bench(None, [moved], options).records[0]
    assert record.accuracy == pytest.approx(expected.accuracy)
    assert record.balanced_accuracy == pytest.approx(expected.balanced_accuracy)


def test_a_model_file_benches_without_keras_and_without_floors(exported_run, monkeypatch, capsys, tmp_path):
    """The TF-free install benches .onnx files: counting FLOPs needs Keras, so the rows have no floor, and
    the report says why instead of failing."""
    from tests.conftest import validation_folder
    from toolkit.bases import flops
    from toolkit.console import print_bench_report

    def no_keras(spec, image_size):
        raise ModuleNotFoundError("No module named 'keras'")

    monkeypatch.setattr(flops, "base_flops", no_keras)
    data = validation_folder(exported_run, tmp_path / "val")
    options = BenchOptions(batches=(1,), warmup=0, runs=2, threads=1, data_dir=str(data))
    report = run_bench(None, [exported_run / "export" / "model_float32.onnx"], options)
    assert report.machine["model_gflop_per_image"] is None and report.machine["floor_ms"] == {}
    record = report.records[0]
    assert record.p50_ms > 0 and record.gflops is None and record.floor_ms is None and record.floor_precision == "fp32"
    print_bench_report(report, (1,))
    assert "no floor: counting the model's FLOPs needs Keras" in capsys.readouterr().out
