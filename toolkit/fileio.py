"""Atomic file writes and content hashes.

Every file the toolkit produces is written to a temporary sibling and renamed
into place, so an interrupted or failed write (Ctrl-C, SIGKILL, a full disk)
never leaves a half-written file where a good one used to be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from toolkit.errors import DiskFullError, FolderBusyError

LOCK_NAME = ".toolkit.lock"


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; rename it over `dest` on success.

    The temporary file keeps `dest`'s suffix by default because several writers
    (Keras, TFLite, ONNX) choose their format from the extension.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    existed = dest.exists()
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{dest.name}{TEMP_MARK}",
        suffix=suffix if suffix is not None else "".join(dest.suffixes) or ".tmp",
        dir=dest.parent,
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are for service accounts too
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            kept = "the previous file was kept" if existed else "nothing was written"
            raise DiskFullError(f"no space left on device while writing {dest}; {kept}") from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


TEMP_MARK = ".toolkit-tmp-"


_HELD_LOCKS: set[int] = set()  # descriptors of the folder locks this process holds


def _drop_held_locks_in_child() -> None:
    """A forked child shares the parent's lock (flock follows the open file description) and could keep it
    after the parent is done: a library forking a helper mid-export left the next export "in use". The
    child never writes the folder, so it lets go of its copies at once; the parent's lock is unaffected."""
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_held_locks_in_child)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], wait: bool = False):
    """Hold the one-writer lock of `folder` (an OS file lock, so a crash or SIGKILL releases it).

    A second writer fails at once with a one-line `FolderBusyError` naming the folder and
    the holder's PID, or with `wait` blocks until the holder is done. The lock file keeps
    the holder's PID and command line, for the message; it is left behind, unlocked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            if not wait:
                raise FolderBusyError(
                    f"{folder} is in use by {holder}; wait for it with --wait, or use another folder"
                ) from None
            from toolkit.progress import phase

            with phase(f"waiting for {folder}, in use by {holder}"):
                fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} ({' '.join(Path(a).name for a in sys.argv[:2])})\n".encode(), 0)
        _HELD_LOCKS.add(fd)
        yield folder
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)  # closing the descriptor releases the lock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files a killed run left (`.NAME.toolkit-tmp-*`) in `folder` and below; return the count.

    Called when a run, an export or a bench starts in a folder that only it writes,
    so a SIGKILL mid-write (up to a 60 MB model) costs no disk for good.
    """
    removed = 0
    root = Path(folder)
    if not root.is_dir():
        return 0
    for path in sorted(root.rglob(f".*{TEMP_MARK}*"), reverse=True):  # a staging folder's files first
        with contextlib.suppress(OSError):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
    return removed


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_to_jsonable, ensure_ascii=False) + "\n"


def write_json_atomic(dest: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(dest, to_json(obj))


def write_with(dest: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Let `writer` fill a temporary path, then move it over `dest`."""
    with atomic_path(dest) as tmp:
        writer(tmp)


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
