"""int8 calibration for ONNX Runtime: the images batch by batch, the calibrator and its ranges.

Shared by the quantiser (onnx_int8), the per-layer diagnosis (diagnose) and the TFLite
int8 path (tflite_int8, which takes entropy and percentile ranges the same way).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from toolkit.export.onnx_float import INPUT_NAME

CALIBRATION_BATCH = 8


def calibration_reader(images: np.ndarray):
    """Batches of calibration images as ONNX Runtime reads them, restartable at any range of batches."""
    from onnxruntime.quantization import CalibrationDataReader

    starts = list(range(0, len(images), CALIBRATION_BATCH))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.set_range(0, len(starts))

        def __len__(self) -> int:
            return len(starts)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pending = iter(starts[start_index:end_index])

        def get_next(self):
            first = next(self.pending, None)
            if first is None:
                return None
            return {INPUT_NAME: images[first : first + CALIBRATION_BATCH].astype(np.float32)}

    return Reader()


def calibrator_options(calibration: dict):
    """(ONNX Runtime's CalibrationMethod, the calibrator's options) for a manifest calibration record.

    Entropy gets TensorRT's 2,048 histogram bins searched down to 128 (`quantize_static` would
    leave ONNX Runtime's 128 and 128, which leaves nothing to search: the ranges equal min/max);
    percentile clips each side separately, since most activations here follow a ReLU.
    """
    from onnxruntime.quantization import CalibrationMethod

    method = calibration["method"]
    if method == "entropy":
        return CalibrationMethod.Entropy, {"num_bins": 2048, "num_quantized_bins": 128}
    if method == "percentile":
        return CalibrationMethod.Percentile, {
            "num_bins": 2048,
            "percentile": calibration["percentile"],
            "symmetric": False,
        }
    return CalibrationMethod.MinMax, {}


def histogram_collector(calibration: dict, histograms: dict | None = None):
    """ONNX Runtime's histogram collector for an entropy or percentile record, over `histograms` if given."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    _, options = calibrator_options(calibration)
    collector = HistogramCollector(
        calibration["method"],
        symmetric=False,
        num_bins=options["num_bins"],
        num_quantized_bins=options.get("num_quantized_bins", 128),
        percentile=options.get("percentile", 99.999),
        scenario="same",
    )
    if histograms is not None:
        collector.histogram_dict = histograms
    return collector


def histogram_thresholds(calibration: dict, histograms: dict, collect: Callable) -> dict:
    """Entropy or percentile thresholds per tensor, from `histograms`: one model's cache, filled on first use.

    Both methods histogram the same values the same way (`collect_value`: 2,048 bins over -t..t, one
    pass over the calibration images) and differ only in how they read the histogram, so a model's
    activations are collected once (`collect(collector)` feeds them to a fresh collector) and the
    other method's thresholds cost no model run. Shared by the ONNX and TFLite int8 paths.
    """
    if not histograms:
        collector = histogram_collector(calibration)
        collect(collector)
        histograms.update(collector.histogram_dict)
    if calibration["method"] == "entropy":
        bins = calibrator_options(calibration)[1]["num_bins"]
        histograms = {name: bounded_histogram(histogram, bins) for name, histogram in histograms.items()}
    return histogram_collector(calibration, histograms).compute_collection_result()


def bounded_histogram(histogram: tuple, num_bins: int) -> tuple:
    """`histogram` (ONNX Runtime's: counts, edges, min, max, threshold) merged back to fewer than 2 x `num_bins` bins.

    ONNX Runtime's collector keeps the first batch's bin width and adds bins when a later batch
    reaches further (`merge_histogram`), so a tensor whose first image is quiet ends with many
    times `num_bins` bins; its entropy search is quadratic in them, in Python, and ran for over
    18 minutes on one ELPV grades export. Merging whole groups of adjacent bins, padded evenly on
    both sides, keeps the histogram symmetric about zero, as the search assumes.
    """
    counts, edges, low, high, _ = histogram
    factor = len(counts) // num_bins  # floor: never coarser than `num_bins` over the range (fewer than twice as many)
    if factor <= 1:
        return histogram
    pad = (-len(counts) // 2) % factor  # per side, so each half is whole groups
    width = edges[1] - edges[0]
    counts = np.pad(counts, pad).reshape(-1, factor).sum(axis=1)
    half = (len(counts) // 2) * factor * width
    edges = np.linspace(-half, half, len(counts) + 1).astype(edges.dtype)
    return counts, edges, low, high, np.array(half, dtype=edges.dtype)


def calibrate_ranges(model: Path, images: np.ndarray, calibration: dict, folder: Path, histograms: dict) -> Path:
    """Activation ranges from the calibration images, one batch at a time, saved where quantize_static reads them.

    Collecting batch by batch keeps memory flat: the histogram calibrators would otherwise hold every
    activation of every image at once (about 60 MB per 224 px VGG16 image). `histograms` is this model's
    cache for the histogram methods (`histogram_thresholds`).
    """
    from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data

    method, options = calibrator_options(calibration)

    def collected(collector=None):
        calibrator = create_calibrator(
            model,
            None,
            augmented_model_path=str(folder / "augmented.onnx"),
            calibrate_method=method,
            extra_options=options,
        )
        if collector is not None:  # a histogram calibrator fills the given collector instead of its own
            calibrator.collector = collector
        reader = calibration_reader(images)
        for batch in range(len(reader)):
            reader.set_range(batch, batch + 1)
            calibrator.collect_data(reader)
        return calibrator

    if calibration["method"] == "minmax":
        tensors = collected().compute_data()
    else:
        tensors = TensorsData(method, histogram_thresholds(calibration, histograms, collected))
    ranges = folder / "ranges.json"
    save_tensors_data(tensors, ranges)
    return ranges
