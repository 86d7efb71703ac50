"""Atomic file writing: every file the project writes goes through here.

A reader (or a killed process) never sees a half-written file: we write to a temporary file in
the same folder, flush it to disk, then `os.replace` it over the target, which is atomic on POSIX.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def finite_or_null(obj: Any) -> Any:
    """JSON has no NaN/inf: turn them into null (and numpy scalars/arrays into Python) so every
    reader can parse the file."""
    if isinstance(obj, dict):
        return {str(k): finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_or_null(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", private: bool = False) -> Iterator[Any]:
    """Open a temporary file beside `path`; on success it replaces `path` atomically.

    `private`: the file keeps mode 0600 from its first byte (secrets: never readable by others,
    not even between the write and a chmod)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the usual permissions (0666 minus umask).
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, private: bool = False) -> None:
    with atomic_open(path, "wb", private=private) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, private: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), private=private)


def atomic_write_json(path: str | os.PathLike, obj: Any, private: bool = False) -> None:
    """Human-readable JSON (indented, sorted keys), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n", private=private)


def atomic_save_npz(path: str | os.PathLike, compressed: bool = True, **arrays: Any) -> None:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_save_figure(path: str | os.PathLike, figure: Any, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def atomic_save_nifti(path: str | os.PathLike, image: Any) -> None:
    """Save a nibabel image (.nii or .nii.gz, by the target's suffix) atomically."""
    import nibabel as nib

    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmpdir:
        tmp = Path(tmpdir) / f"image{suffix}"
        nib.save(image, tmp)
        atomic_write_bytes(path, tmp.read_bytes())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
