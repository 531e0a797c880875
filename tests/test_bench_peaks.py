"""Matrix peaks per precision, each row's floor, and the recommendation."""

from __future__ import annotations

import pytest

from toolkit.bench import peaks
from toolkit.bench.report import recommend
from toolkit.bench.types import BenchRecord


def _row(name: str, backend: str, precision: str, p50: float, passed: bool | None) -> BenchRecord:
    return BenchRecord(
        name, backend, precision, "cpu", "cpu", 1, 3, p50, p50, p50, p50, 1000 / p50, 0.1, 100.0, 1.0, 0.9,
        floor_precision=peaks.floor_precision(precision), floor_ms=1.0, percent_of_peak=50.0, gate_passed=passed,
    )  # fmt: skip


def test_each_precision_maps_to_the_peak_that_bounds_it():
    assert [peaks.floor_precision(p) for p in ("float32", "float16", "dynamic", "int8", "bf16", "unknown")] == [
        "fp32",
        "fp32",
        "int8",
        "int8",
        "bf16",
        "fp32",
    ]


@pytest.fixture
def fresh_peaks():
    """Each test measures anew (measure_peaks caches per process)."""
    peaks._measure_peaks.cache_clear()
    yield
    peaks._measure_peaks.cache_clear()


def test_peaks_are_measured_per_precision_with_each_runtime(fresh_peaks):
    from toolkit.hardware import cpu_supports_bf16

    found = peaks.measure_peaks(threads=1, size=128)
    assert set(found) == {"fp32", "int8"} | ({"bf16"} if cpu_supports_bf16() else set())
    assert set(found["fp32"]["by_runtime"]) == {"numpy", "openvino"}
    assert set(found["int8"]["by_runtime"]) == {"onnxruntime", "openvino"}
    for peak in found.values():
        assert peak["gflops"] == max(peak["by_runtime"].values()) > 0
        assert peak["runtime"] in peak["by_runtime"]
    # OpenVINO says which kernel ran: its int8 multiply in an int8 (u8/i8) primitive, its fp32 one in f32
    ((int8_kernel, count),) = found["int8"]["kernels"]["openvino"].items()
    assert int8_kernel.startswith("FullyConnected ") and int8_kernel.split()[-1] in ("u8", "i8") and count == 1
    assert list(found["fp32"]["kernels"]["openvino"])[0].endswith(" f32")
    assert "numpy" not in found["fp32"]["kernels"]  # numpy names no kernel: nothing is made up


def test_peaks_are_measured_once_per_process(fresh_peaks, monkeypatch):
    calls = []

    def counted(size, threads):
        calls.append(size)
        return 10.0, None

    monkeypatch.setattr(peaks, "MEASURES", {"fp32": {"numpy": counted}})
    first = peaks.measure_peaks(threads=1, size=64)
    first["fp32"]["gflops"] = -1  # a caller's edit does not reach the cache
    assert peaks.measure_peaks(threads=1, size=64)["fp32"]["gflops"] == 10.0 and calls == [64]
    peaks.measure_peaks(threads=1, size=32)
    assert calls == [64, 32]


def test_a_runtime_that_is_not_installed_is_named_missing(fresh_peaks, monkeypatch):
    def absent(size, threads):
        raise ImportError("no openvino")

    monkeypatch.setitem(peaks.MEASURES, "fp32", {"numpy": peaks.numpy_fp32, "openvino": absent})
    monkeypatch.setitem(peaks.MEASURES, "int8", {"openvino": absent})
    found = peaks.measure_peaks(threads=1, size=64)
    assert found["fp32"]["missing"] == ["openvino"] and set(found["fp32"]["by_runtime"]) == {"numpy"}
    assert "int8" not in found  # no runtime measured it: no made-up figure


def test_recommendation_is_the_fastest_artifact_that_passed_its_gate():
    rows = [
        _row("keras bf16", "keras", "bf16", 1.0, None),  # a reference, not an artifact
        _row("tflite int8", "tflite", "int8", 2.0, False),  # fastest artifact, but its gate failed
        _row("openvino int8", "openvino", "int8", 3.0, True),
        _row("onnx float32", "onnx", "float32", 5.0, True),
        _row("bare.onnx", "onnx", "unknown", 0.5, None),  # benchmarked without its manifest: no gate result
    ]
    rec = recommend(rows)
    assert rec["name"] == "openvino int8" and rec["p50_ms"] == pytest.approx(3.0)
    assert rec["floor_precision"] == "int8" and rec["percent_of_floor"] == pytest.approx(50.0)
    assert recommend(rows[:2] + rows[4:]) is None
