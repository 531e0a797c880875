"""This machine's matrix peak per precision (fp32, bf16, int8), measured with the runtimes the toolkit ships.

A float32 sgemm says nothing about how close an int8 or bf16 artifact is to its
limit: on an AMX Xeon the bf16 and int8 matrix units run several times faster
than float32 FMA, so a row's share of the float32 peak can read 900%. Each
precision's peak is the best of a few large matrix multiplies through the
runtimes that execute that precision here (numpy and OpenVINO for fp32, OpenVINO
for bf16, ONNX Runtime's MatMulInteger and an OpenVINO FakeQuantize MatMul for
int8), with the same thread count as the benchmark rows. They are lower bounds of
the hardware's peak (a busy machine only lowers them), and bench.json keeps every
runtime's figure. A runtime that is not installed is left out and said so.
OpenVINO also says which kernel ran each multiply and in what precision
(`kernels`: e.g. `brgemm_avx512_amx_I8 u8` on AMX), so the header shows whether the
matrix units were used. Measured once per process per (threads, size).
"""

from __future__ import annotations

import copy
import functools
import os
import time
from collections.abc import Callable

import numpy as np

from toolkit.hardware import cpu_supports_bf16

PEAK_SIZE = 2048  # 17 GFLOP per multiply: long enough to time, short enough for a benchmark's tail
PEAK_SIZE_ENV = "TOOLKIT_BENCH_PEAK_SIZE"  # a smaller side for quick runs (the test suite uses 256)
REPEATS = 5
# Which precision's peak bounds a row: TFLite float16 files run in float32 on CPUs, dynamic-range
# quantized convolutions in int8 (XNNPACK's QD8 kernels), the bf16 rows in bf16.
FLOOR_PRECISION = {"float32": "fp32", "float16": "fp32", "dynamic": "int8", "int8": "int8", "bf16": "bf16"}


def floor_precision(precision: str) -> str:
    """The matrix precision whose peak bounds an artifact of `precision` ("unknown" files: fp32)."""
    return FLOOR_PRECISION.get(precision, "fp32")


def _best_rate(run: Callable[[], object], size: int, repeats: int = REPEATS) -> float:
    """GFLOP/s (or GOP/s) of the fastest of `repeats` calls after one warm-up (2 operations per multiply-add)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def _matrices(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((size, size), dtype=np.float32), rng.standard_normal((size, size), dtype=np.float32)


Measured = tuple[float, dict[str, int] | None]  # (GFLOP/s, the kernels the runtime says it ran, or None)


def numpy_fp32(size: int, threads: int) -> Measured:
    a, b = _matrices(size)
    return _best_rate(lambda: a @ b, size), None


def _openvino_matmul(size: int, threads: int, hint: str, int8: bool) -> Measured:
    import openvino as ov
    import openvino.opset13 as ops

    from toolkit.runtime.openvino import kernel_summary

    a, b = _matrices(size)
    x = ops.parameter([size, size], np.float32, name="a")
    if int8:  # NNCF's pattern: FakeQuantize on the activation, int8 weights dequantized by a scale
        lo, hi = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
        x_in = ops.fake_quantize(x, lo, hi, lo, hi, 256)
        weights = np.clip(np.round(b * 32), -127, 127).astype(np.int8)
        w = ops.multiply(ops.convert(ops.constant(weights), np.float32), ops.constant(np.float32(1 / 32)))
    else:
        x_in, w = x, ops.constant(b)
    model = ov.Model([ops.matmul(x_in, w, False, False)], [x], "peak")
    config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return _best_rate(lambda: request.infer({0: a}), size), kernel_summary(compiled)


def openvino_fp32(size: int, threads: int) -> Measured:
    return _openvino_matmul(size, threads, "f32", int8=False)


def openvino_bf16(size: int, threads: int) -> Measured:
    return _openvino_matmul(size, threads, "bf16", int8=False)


def openvino_int8(size: int, threads: int) -> Measured:
    return _openvino_matmul(size, threads, "bf16" if cpu_supports_bf16() else "f32", int8=True)


def onnxruntime_int8(size: int, threads: int) -> Measured:
    """MatMulInteger (uint8 x int8 -> int32), the kernel ONNX Runtime's QDQ MatMul and Conv reduce to."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (size, size), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])],
        [numpy_helper.from_array(weights, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return _best_rate(lambda: session.run(None, {"a": a}), size), None  # ONNX Runtime names no kernels


MEASURES: dict[str, dict[str, Callable[[int, int], Measured]]] = {
    "fp32": {"numpy": numpy_fp32, "openvino": openvino_fp32},
    "bf16": {"openvino": openvino_bf16},
    "int8": {"onnxruntime": onnxruntime_int8, "openvino": openvino_int8},
}


def peak_size() -> int:
    """The matrix side to measure at: PEAK_SIZE, or $TOOLKIT_BENCH_PEAK_SIZE."""
    return int(os.environ.get(PEAK_SIZE_ENV, PEAK_SIZE))


def measure_peaks(threads: int, size: int) -> dict[str, dict]:
    """{precision: {"gflops", "runtime", "by_runtime", "kernels", "missing"}} for fp32, bf16 and int8.

    bf16 is measured only where the CPU has native bf16 (elsewhere OpenVINO would
    emulate the "bf16" multiply, slower than float32, and the bf16 rows are not
    offered). Cached per process: a second bench in the same process reuses it.
    """
    return copy.deepcopy(_measure_peaks(threads, size))


@functools.lru_cache(maxsize=4)
def _measure_peaks(threads: int, size: int) -> dict[str, dict]:
    peaks: dict[str, dict] = {}
    for precision, runtimes in MEASURES.items():
        if precision == "bf16" and not cpu_supports_bf16():
            continue
        rates, kernels, missing = {}, {}, []
        for name, measure in runtimes.items():
            try:
                rates[name], used = measure(size, threads)
            except ImportError:
                missing.append(name)
                continue
            if used is not None:
                kernels[name] = used
        if rates:
            best = max(rates, key=rates.get)
            peaks[precision] = {
                "gflops": rates[best],
                "runtime": best,
                "by_runtime": rates,
                "kernels": kernels,
                "missing": missing,
            }
    return peaks
