"""Every error type of the toolkit, in one place.

Every error a user can cause (a bad folder, a corrupt model, a drifting export)
is a `ToolkitError`. The CLI catches it once and prints its message as a single
line with exit code `exit_code`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ToolkitError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2


class DatasetError(ToolkitError):
    """The data folder or an image in it cannot be used."""


class ImageTooLargeError(DatasetError):
    """An image claims more pixels than the decoder accepts (a decompression bomb); a server answers 413."""


class ModelError(ToolkitError):
    """A model file is missing, corrupt, unsafe or cannot be built."""


class WeightsError(ModelError):
    """The VGG16 base weights cannot be obtained."""


class ExportError(ToolkitError):
    """A conversion to a deployable format failed."""


class ParityError(ToolkitError):
    """An exported artifact does not agree with the Keras model.

    Exit code 1: the export itself worked and was kept for inspection; it just
    failed the gate.
    """

    exit_code = 1


class RuntimeModelError(ModelError):
    """The runtime cannot load or run a model (bad file, wrong device)."""


class DeviceError(ToolkitError):
    """The requested execution device is not what actually runs."""


class TrainingError(ToolkitError):
    """Training cannot continue (diverged, nothing to resume)."""


class BenchError(ToolkitError):
    """A benchmark could not be set up or a backend failed to run."""


class FolderBusyError(ToolkitError):
    """Another process is writing this run or export folder (exit 2; `--wait` waits for it instead)."""


class DiskFullError(ToolkitError):
    """No space left while writing; the previous file (if any) is untouched."""


class ServeError(ToolkitError):
    """`toolkit serve` cannot start: the port is taken, the address is wrong, or the options disagree."""


class ClusterError(ToolkitError):
    """The Ray cluster cannot be reached, or a batch job on it failed for good (after Ray's own retries)."""


class ProtocolError(ToolkitError):
    """A request `toolkit serve` cannot accept; `status` is the 4xx (or 5xx) it is answered with, as JSON."""

    def __init__(self, message: str, status: int = 400, retry_after_s: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s  # sent as Retry-After (503: busy, try again shortly)

    def __reduce__(self):  # raised in a parser process, it crosses back with its status
        return type(self), (str(self), self.status, self.retry_after_s)


class ServerClosingError(ToolkitError):
    """The server is shutting down and takes no new work (answered with 503)."""


class MissingDependencyError(ToolkitError):
    """A command needs a package that this install left out (the base install has no TensorFlow)."""


class SearchStopped(Exception):
    """`toolkit tune`: raised before a trial the search must not start (time budget, max trials); caught in
    `toolkit.tune.search.run_search`, never shown as an error."""


class Interrupted(ToolkitError):
    """The user pressed Ctrl-C; state needed to resume was saved."""

    exit_code = 130


class ProtobufError(ValueError):
    """Internal: bytes that are not a well-formed protobuf message (the runtime turns it into a ModelError)."""


class StepFailed(Exception):  # noqa: N818 - internal control flow, never shown as a traceback
    """Internal: one `--weights imagenet` resolver step could not provide weights; the message says why in one line."""
