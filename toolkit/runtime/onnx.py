"""ONNX Runtime: CPU or CUDA, external data only inside the model's folder, one session shared by threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.errors import DeviceError, RuntimeModelError
from toolkit.runtime.base import Backend, check_device, detect_layout, output_roles, scaled, spatial_from_shape
from toolkit.runtime.digest import onnx_digest
from toolkit.runtime.onnx_external import ProtobufError, external_data_locations


class OnnxBackend(Backend):
    kind = "onnx"

    def __init__(
        self,
        path: Path,
        device: str = "auto",
        threads: int | None = None,
        pixel_scale: str = "0..255",
        allow_external_data: bool = False,
    ):
        check_single_onnxruntime()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = self._providers(ort, device)
        data = path.read_bytes()
        source = check_external_data(path, data, allow_external_data)
        self._digest = onnx_digest(data)  # of the very bytes the session is made from
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=providers)
        except Exception as exc:
            text = " ".join(str(exc).split())
            raise RuntimeModelError(f"cannot load ONNX model {path.name}: {text[:200]}") from exc
        used = self.session.get_providers()
        if device == "cuda" and (not used or used[0] != "CUDAExecutionProvider"):
            raise DeviceError(
                f"device=cuda asked for, but ONNX Runtime runs {used[0] if used else 'nothing'} "
                "(install the gpu extra, onnxruntime-gpu, on a machine with an NVIDIA GPU and CUDA)"
            )
        self.provider = "cuda" if used and used[0] == "CUDAExecutionProvider" else "cpu"
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        outputs = self.session.get_outputs()
        probs, heatmap = output_roles([len(o.shape) for o in outputs])
        self.output_name = outputs[probs].name
        self.heatmap_name = outputs[heatmap].name if heatmap is not None else None
        self.layout = detect_layout(inp.shape)
        h, w = spatial_from_shape(inp.shape, self.layout)
        self.image_size = (h or 0, w or 0)
        self.input_dtype = {"tensor(uint8)": "uint8", "tensor(float)": "float32"}.get(inp.type, inp.type)
        self.pixel_scale = pixel_scale

    @staticmethod
    def _providers(ort, device: str) -> list[str]:
        check_device(device)
        available = ort.get_available_providers()
        if device == "cpu":
            return ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise DeviceError(
                    "device=cuda asked for, but this onnxruntime has no CUDA provider "
                    "(install the gpu extra, onnxruntime-gpu, instead of onnxruntime)"
                )
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]

    def _input(self, batch: np.ndarray) -> np.ndarray:
        x = batch if self.input_dtype == "uint8" else scaled(batch, self.pixel_scale)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.layout == "NCHW" else x

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self.output_name], {self.input_name: self._input(batch)})[0], np.float32)

    def run_heatmap(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.heatmap_name is None:
            return super().run_heatmap(batch)
        probs, maps = self.session.run([self.output_name, self.heatmap_name], {self.input_name: self._input(batch)})
        return np.asarray(probs, np.float32), np.asarray(maps, np.float32)

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)


ONNXRUNTIME_FIX = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"


def installed_onnxruntimes() -> set[str]:
    """Which of the onnxruntime distributions are installed (they share one folder)."""
    import importlib.metadata as md

    found = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            md.version(name)
            found.add(name)
        except md.PackageNotFoundError:
            continue
    return found


def check_single_onnxruntime() -> None:
    """Refuse to run with both onnxruntime and onnxruntime-gpu: whichever installed last broke the other."""
    if installed_onnxruntimes() >= {"onnxruntime", "onnxruntime-gpu"}:
        raise DeviceError(
            f"onnxruntime and onnxruntime-gpu are both installed and overwrite each other; fix: {ONNXRUNTIME_FIX}"
        )


def check_external_data(path: Path, data: bytes, allow: bool) -> bytes | str:
    """What to hand ONNX Runtime: the bytes, or (external data allowed and safe) the path.

    External data is refused unless allowed, and then only as regular files that
    resolve inside the model's own folder: no absolute paths, no `..`, no
    symlinks pointing elsewhere.
    """
    try:
        locations = external_data_locations(data)
    except ProtobufError as exc:
        raise RuntimeModelError(f"cannot load ONNX model {path.name}: not a valid ONNX file ({exc})") from exc
    if not locations:
        return data  # from bytes: ONNX Runtime has no folder to resolve paths against
    if not allow:
        raise RuntimeModelError(
            f"{path.name} references external data files ({locations[0]}); pass --allow-external-data to permit "
            "files inside the model's folder"
        )
    folder = path.parent.resolve()
    for location in set(locations):
        candidate = Path(location)
        target = (folder / candidate).resolve()
        if candidate.is_absolute() or ".." in candidate.parts or not target.is_relative_to(folder):
            raise RuntimeModelError(f"{path.name}: external data '{location}' points outside the model's folder")
        if not target.is_file():
            raise RuntimeModelError(f"{path.name}: external data file '{location}' is missing")
    return str(path)
