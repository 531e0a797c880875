"""export/tflite_int8.py: the ranges measured batched on every core are the TFLite calibrator's own."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # TFLite conversions


def _ranges(blob: bytes) -> dict[str, tuple[float, float]]:
    from tensorflow.lite.tools import flatbuffer_utils

    from toolkit.export.tflite_int8 import _range_tensors

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
    tensors = model.subgraphs[0].tensors
    return {tensors[i].name: (tensors[i].quantization.min[0], tensors[i].quantization.max[0])
            for i in _range_tensors(model)}  # fmt: skip


def test_the_probed_ranges_are_the_converters_calibration(trained_run, tmp_path):
    from toolkit.export.tflite import anchored_calibration
    from toolkit.export.tflite_int8 import calibrated_model, converter_calibration
    from toolkit.keras_io import load_keras_model
    from toolkit.run_folder import load_run

    images = np.asarray(load_run(trained_run).load_data().train.images[:12])
    ctx = SimpleNamespace(model=load_keras_model(trained_run / "best.keras"), calibration_images=images,
                          scratch={"work": tmp_path})  # fmt: skip
    probed = _ranges(calibrated_model(ctx))
    reference = _ranges(converter_calibration(ctx, anchored_calibration(images)))  # every image, one at a time
    one_image = _ranges(converter_calibration(ctx, anchored_calibration(images)[:1]))
    assert probed.keys() == reference.keys() and len(probed) > 5
    for name, (low, high) in reference.items():
        span = max(high - min(low, 0.0), 1e-6)
        assert abs(min(low, 0.0) - probed[name][0]) <= 1e-4 * span, name  # zero stays in range, as in with_ranges
        assert abs(max(high, 0.0) - probed[name][1]) <= 1e-4 * span, name
    assert any(one_image[n] != reference[n] for n in reference)  # so the ranges above were really measured


def test_percentile_after_entropy_reads_the_same_histograms_without_running_the_model(
    trained_run, tmp_path, monkeypatch
):
    """One histogram collection serves both methods: the second one's ranges equal a fresh collection's."""
    import toolkit.export.tflite_int8 as tflite_int8
    from toolkit.export.tflite import anchored_calibration
    from toolkit.keras_io import load_keras_model
    from toolkit.run_folder import load_run

    images = anchored_calibration(np.asarray(load_run(trained_run).load_data().train.images[:12]))
    ctx = SimpleNamespace(model=load_keras_model(trained_run / "best.keras"), calibration_images=images,
                          scratch={"work": tmp_path})  # fmt: skip
    calibrated = tflite_int8.calibrated_model(ctx)
    percentile = {"method": "percentile", "percentile": 99.0, "images": 12}
    fresh = tflite_int8.histogram_ranges(calibrated, images, percentile, {})
    histograms: dict = {}
    entropy = tflite_int8.histogram_ranges(calibrated, images, {"method": "entropy", "images": 12}, histograms)
    assert histograms and entropy != fresh

    def no_second_run(*args, **kwargs):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(tflite_int8, "probe_batches", no_second_run)
    assert tflite_int8.histogram_ranges(calibrated, images, percentile, histograms) == fresh
