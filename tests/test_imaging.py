from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.memory import PRELUDE
from toolkit import imaging
from toolkit.errors import DatasetError
from toolkit.imaging import load_image_array, load_rgb


def _png_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def test_sixteen_bit_grayscale_scales_down_instead_of_clipping_to_white():
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    img = Image.fromarray(arr)
    rgb = np.asarray(load_rgb(_png_bytes(img)))
    assert rgb.dtype == np.uint8
    assert 120 <= rgb.mean() <= 135


def test_palette_with_transparency_composites_on_white():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0] * 256)
    img.info["transparency"] = 0
    rgb = np.asarray(load_rgb(_png_bytes(img, transparency=0)))
    assert (rgb == 255).all()


def test_rgba_alpha_composites_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgb = np.asarray(load_rgb(_png_bytes(img)))
    assert (rgb == 255).all()


def test_cmyk_and_grayscale_convert_to_rgb():
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, format="JPEG")
    rgb = np.asarray(load_rgb(buf.getvalue()))
    assert rgb.shape == (8, 8, 3) and rgb[..., 0].mean() > 200 and rgb[..., 1].mean() < 60
    gray = np.asarray(load_rgb(_png_bytes(Image.new("L", (3, 3), 77))))
    assert (gray == 77).all()


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    out = load_rgb(buf.getvalue())
    assert out.size == (10, 20)
    arr = np.asarray(out)
    assert arr[:10].mean() > 200 and arr[10:].mean() < 50  # the white half is now on top


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "empty"),
        (b"hello, not an image", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "cannot decode|not an image"),
    ],
)
def test_unreadable_bytes_raise_dataset_error(payload, reason):
    with pytest.raises(DatasetError, match=reason):
        load_rgb(payload)


def test_truncated_jpeg_is_refused():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    with pytest.raises(DatasetError):
        load_rgb(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(imaging, "MAX_PIXELS", 100)
    with pytest.raises(DatasetError, match="too large"):
        load_rgb(_png_bytes(Image.new("RGB", (20, 20))))


def test_resize_is_bilinear_to_requested_size():
    arr = load_image_array(_png_bytes(Image.new("RGB", (50, 30), (10, 20, 30))), (16, 24))
    assert arr.shape == (16, 24, 3) and arr.dtype == np.uint8
    assert (arr == [10, 20, 30]).all()


@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.integers(0, 2047), st.integers(0, 255))
def test_fuzzed_bytes_decode_or_raise_dataset_error(noise, position, value):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 60, 30)).save(buf, "PNG")
    valid = bytearray(buf.getvalue())
    valid[position % len(valid)] = value
    for payload in (noise, bytes(valid)):
        try:
            out = load_image_array(payload, 8)
        except DatasetError:
            continue
        assert out.shape == (8, 8, 3)


def _encoded(mode: str, size: tuple[int, int], fmt: str, oriented: bool = False) -> bytes:
    """A flat image of `mode`, encoded (decoding needs its full size in memory whatever its content)."""
    width, height = size
    img = Image.fromarray(np.full((height, width), 1000, np.uint16)) if mode == "I;16" else Image.new(mode, size)
    out = io.BytesIO()
    extra = {}
    if oriented:
        exif = Image.Exif()
        exif[0x0112] = 6
        extra["exif"] = exif
    if mode == "P":
        extra["transparency"] = 0
    img.save(out, format=fmt, **extra)
    return out.getvalue()


_PEAK = (
    PRELUDE
    + """
import gc, sys
from toolkit.imaging import load_image_array
data = open(sys.argv[1], "rb").read()
gc.collect()
before = reset_peak()
load_image_array(data, (224, 224))
print(peak() - before)
"""
)


@pytest.mark.parametrize(
    "mode, size, fmt, oriented",
    [
        ("RGB", (2500, 2500), "PNG", False),
        ("RGBA", (2500, 2500), "PNG", False),
        ("P", (2500, 2500), "PNG", False),
        ("I;16", (2500, 2500), "PNG", False),
        ("RGB", (2500, 2500), "JPEG", True),
        ("CMYK", (2500, 2500), "JPEG", False),
        ("RGBA", (4200, 4200), "PNG", False),  # reduced early: 17.6 megapixels
        ("RGB", (6000, 4000), "JPEG", False),  # decoded at 1/4 scale (draft)
    ],
)
def test_decode_cost_bounds_the_peak_memory(tmp_path, mode, size, fmt, oriented):
    """The estimate a server reserves before decoding is at least the real peak (RSS of a fresh process),
    and not so loose that the budget would refuse what it could decode: at most 2.1x (a PNG counts as
    rotated, since reading its orientation could need the whole decode)."""
    import subprocess
    import sys

    data = _encoded(mode, size, fmt, oriented)
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    run = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, check=True)
    measured, estimated = int(run.stdout), imaging.decode_cost(data, (224, 224))
    assert measured <= estimated <= 2.1 * measured + (8 << 20), (measured, estimated)


def test_images_under_the_reduction_threshold_decode_exactly_as_a_full_decode():
    data = _encoded("RGBA", (1200, 900), "PNG")
    full = Image.open(io.BytesIO(data))
    full.load()
    background = Image.new("RGBA", full.size, (255, 255, 255, 255))
    expected = imaging.resize_rgb(Image.alpha_composite(background, full).convert("RGB"), 64)
    assert np.array_equal(load_image_array(data, 64), expected)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_large_images_reduced_early_stay_close_to_a_full_decode(fmt):
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8)).resize((6000, 4000)))
    out = io.BytesIO()
    Image.fromarray(smooth).save(out, format=fmt)
    data = out.getvalue()
    reduced = load_image_array(data, (224, 224)).astype(int)
    full = imaging.resize_rgb(load_rgb(data), (224, 224)).astype(int)  # no size hint: no reduction
    if fmt == "JPEG":  # decoded at a quarter of the size: the estimate never holds the full size
        assert imaging.decode_cost(data, (224, 224)) < 6000 * 4000 * 4
    assert np.abs(reduced - full).mean() < 2.0
