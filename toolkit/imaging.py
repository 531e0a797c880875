"""Image decoding and resizing shared by training and serving.

Training and the embeddable runtime must feed the model identical pixels, so
both call `load_image_array`; it needs only numpy and Pillow. Any decoding
problem becomes a `DatasetError` carrying a short reason, which the data layer
records in `data_report.json` and the runtime reports per image.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from toolkit.errors import DatasetError, ImageTooLargeError

# Refuse images above this many pixels before decoding them: a 40 KB PNG can
# claim 50,000 x 50,000 pixels and would need gigabytes once decoded. Pillow's
# own guard only warns below 2x its limit, so we check the header ourselves.
MAX_PIXELS = 64_000_000

# Images above this many pixels are reduced early, before any conversion: JPEGs decode at 1/2, 1/4 or
# 1/8 scale (Pillow's draft), other formats are box-reduced by an integer factor right after decoding,
# always to at least REDUCE_MARGIN times the model's input; the bilinear resize then does the rest.
# Below it (every usual photo and dataset image) the pixels are exactly those of a full decode.
REDUCE_ABOVE_PIXELS = 16_000_000
REDUCE_MARGIN = 4
# Modes Pillow can box-reduce; others (palette, 1-bit, 16-bit) convert at full size.
REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"})

# The resize every path uses. Pillow's bilinear filter antialiases when
# downscaling, which TF's resize does not by default; keeping one function is
# what guarantees train/serve pixel identity.
RESAMPLE = Image.Resampling.BILINEAR

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise DatasetError("empty file")
        return Image.open(io.BytesIO(bytes(source)))
    path = Path(source)
    if path.stat().st_size == 0:
        raise DatasetError("empty file")
    return Image.open(path)


def _sixteen_bit_to_uint8(arr: np.ndarray) -> np.ndarray:
    # Scale the full 16-bit range down; a plain cast or clip would turn every
    # value above 255 white.
    return (arr.astype(np.uint32) >> 8).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if mode == "I" and arr.size and arr.max() <= 255 and arr.min() >= 0:
            arr8 = arr.astype(np.uint8)
        else:
            arr8 = _sixteen_bit_to_uint8(np.clip(arr, 0, 65535))
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        arr8 = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img if mode == "RGBA" else img.convert("RGBA")  # no copy when it already is (memory, not pixels)
        # Transparent regions become white, as every image viewer shows them.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        composited = Image.alpha_composite(background, rgba)
        del background, rgba
        return composited.convert("RGB")
    return img.convert("RGB")


def load_rgb(source: ImageSource, reduce_for: Sequence[int] | None = None) -> Image.Image:
    """Fully decode `source` into an 8-bit RGB image with EXIF orientation applied.

    `reduce_for` (height, width): the size the image is headed for; an image above
    REDUCE_ABOVE_PIXELS is then reduced while it decodes (JPEG) or right after, so that
    its conversions never need its full size in memory again.
    """
    if isinstance(source, np.ndarray):
        return Image.fromarray(_array_to_uint8_rgb(source))
    with _decoding_errors():
        img = _open(source)
        _check_pixels(img)
        _draft(img, reduce_for)
        img.load()  # decode everything now, inside this error handling
        img = _reduced(img, reduce_for)
        ImageOps.exif_transpose(img, in_place=True)  # in place: no full-size copy of an upright image
        return _to_rgb(img)


@contextlib.contextmanager
def _decoding_errors():
    """Every decoding problem as a DatasetError with a short reason (Pillow raises many types for corrupt data)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except DatasetError:
        raise
    except FileNotFoundError as exc:
        raise DatasetError(f"file not found: {exc.filename}") from exc
    except UnidentifiedImageError as exc:
        raise DatasetError("not an image Pillow can read") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError("decompression bomb refused") from exc
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"cannot decode image: {reason}") from exc


def _check_pixels(img: Image.Image) -> None:
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(f"image too large ({width}x{height} pixels; limit {MAX_PIXELS})")


def _reduction(size: tuple[int, int], reduce_for: Sequence[int] | None) -> int:
    """The integer factor a large image shrinks by before conversion (1: none), orientation-independent."""
    width, height = size
    if not reduce_for or width * height <= REDUCE_ABOVE_PIXELS:
        return 1
    wanted = REDUCE_MARGIN * max(int(reduce_for[0]), int(reduce_for[1]))
    return max(1, min(width, height) // wanted)


def _draft(img: Image.Image, reduce_for: Sequence[int] | None) -> None:
    """JPEG: decode a large image at 1/2..1/8 scale directly (the decoder never holds the full size)."""
    factor = _reduction(img.size, reduce_for)
    if factor > 1 and img.format == "JPEG":
        width, height = img.size
        img.draft(img.mode, (width // factor, height // factor))


def _reduced(img: Image.Image, reduce_for: Sequence[int] | None) -> Image.Image:
    factor = _reduction(img.size, reduce_for)
    if factor > 1 and img.mode in REDUCIBLE:
        return img.reduce(factor)
    return img


def _array_to_uint8_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise DatasetError(f"array images must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        raise DatasetError(f"array images must be uint8 RGB, got {arr.dtype}")
    return np.ascontiguousarray(arr)


def resize_rgb(img: Image.Image, size: int | Sequence[int]) -> np.ndarray:
    """Resize to (height, width) with the shared filter; return HxWx3 uint8."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if img.size != (width, height):
        img = img.resize((width, height), RESAMPLE)
    return np.asarray(img, dtype=np.uint8).reshape(height, width, 3)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def load_image_array(source: ImageSource, size: int | Sequence[int]) -> np.ndarray:
    """Decode, orient, convert and resize one image: the single path to model pixels."""
    return resize_rgb(load_rgb(source, reduce_for=_pair(size)), size)


# Bytes per pixel of a decoded image in Pillow's memory (multi-band modes take 4 bytes a pixel).
_STORED = {"1": 1, "L": 1, "P": 1, "I;16": 2}
# Bytes per pixel that `_to_rgb` allocates on top of the decoded image, at its peak, by mode (other
# modes: one RGB copy); measured with `tests/test_imaging.py::test_decode_cost_bounds_the_peak_memory`.
_CONVERSION = {"RGB": 0, "RGBA": 8, "LA": 12, "PA": 12, "P": 16, "1": 4, "L": 4, "I": 10, "F": 14, "I;16": 16}
_PREMULTIPLIED = frozenset({"RGBA", "LA"})  # Image.reduce makes a full-size premultiplied copy of these


def decode_cost(source: bytes | bytearray | memoryview, size: int | Sequence[int]) -> int:
    """Bytes of memory `load_image_array(source, size)` will need at its peak, read from the header alone.

    A server reserves this much of its decode budget before decoding, so a small file that
    claims many pixels is refused or queued instead of decoded. Raises what decoding would
    for a file that is not an image or is over MAX_PIXELS.
    """
    with _decoding_errors():
        img = _open(source)
        _check_pixels(img)
        _draft(img, _pair(size))
        oriented = _may_rotate(img)
    return _cost(img.size, "I;16" if img.mode.startswith("I;16") else img.mode, oriented, _pair(size))


# Formats whose EXIF sits before the pixels, so that reading it decodes nothing.
_EXIF_IN_HEADER = frozenset({"JPEG", "MPO", "TIFF", "WEBP"})


def _may_rotate(img: Image.Image) -> bool:
    """Whether exif_transpose may rotate the image, without decoding it: Pillow's PNG getexif() decodes the
    whole image to find an eXIf chunk after the pixels, so such formats count as rotated unless the header
    already said otherwise."""
    if img.format in _EXIF_IN_HEADER:
        return img.getexif().get(0x0112, 1) != 1
    raw = img.info.get("exif")
    if raw is None:
        return True
    exif = Image.Exif()
    exif.load(raw)
    return exif.get(0x0112, 1) != 1


def _cost(size: tuple[int, int], mode: str, oriented: bool, out: tuple[int, int]) -> int:
    width, height = size
    pixels, stored = width * height, _STORED.get(mode, 4)
    factor = _reduction(size, out) if mode in REDUCIBLE else 1
    decoded = pixels * stored + (pixels * 4 if factor > 1 and mode in _PREMULTIPLIED else 0)
    after = (pixels // factor**2) * (stored * oriented + _CONVERSION.get(mode, 4))  # at the size conversion sees
    resize = 4 * out[1] * (height // factor) + 4 * out[0] * out[1]  # the resize's first pass and its output
    return decoded + after + resize + (4 << 20)


def image_extensions() -> frozenset[str]:
    """Lower-case extensions of every format this Pillow build can open."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def collect_images(inputs: list[Path]) -> tuple[list[Path], list[str]]:
    """Image files named directly or found (recursively, hidden files skipped) in folders; and what was not found."""
    extensions = image_extensions()
    images: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(
                p
                for p in item.rglob("*")
                if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")
            )
            if not found:
                problems.append(f"{item}: no image files in folder")
            images += found
        elif item.exists():
            images.append(item)
        else:
            problems.append(f"{item}: file not found")
    return images, problems
