"""Content digests: what a model file is, excluding the record that carries the digest.

Verification follows a file's content, not its name: the model-facts record inside
each artifact holds `content_sha256`, a digest of everything in the file except that
record, so a renamed, linked or copied file is checked alone. Export computes the
digest with these same functions, so writer and reader cannot disagree on what counts.

- ONNX: every top-level field of the ModelProto in file order, except `metadata_props`
  (field 14, where the record lives), read with the runtime's own protobuf walker.
- TFLite: the flatbuffer, which ends where MediaPipe's populator appended the zip of
  associated files (labels.txt and the record).
- OpenVINO IR: the .xml with its `<toolkit>` rt_info section removed, then the .bin.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path

from toolkit.runtime.onnx_external import top_level_fields

ONNX_METADATA_PROPS = 14
TOOLKIT_SECTION = re.compile(rb"<toolkit>.*?</toolkit>", re.DOTALL)


def onnx_digest(data: bytes) -> str:
    digest = hashlib.sha256()
    for number, field in top_level_fields(data):
        if number != ONNX_METADATA_PROPS:
            digest.update(field)
    return digest.hexdigest()


def zip_start(content: bytes) -> int:
    """Where the appended zip of associated files starts (the file's length when there is none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            offsets = [info.header_offset for info in archive.infolist()]
    except (zipfile.BadZipFile, OSError, ValueError):
        return len(content)
    return min(offsets) if offsets else len(content)


def tflite_digest(content: bytes) -> str:
    return hashlib.sha256(content[: zip_start(content)]).hexdigest()


def openvino_digest(xml: Path) -> str:
    digest = hashlib.sha256(TOOLKIT_SECTION.sub(b"", xml.read_bytes()))
    with open(xml.with_suffix(".bin"), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
