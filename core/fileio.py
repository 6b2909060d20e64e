"""Atomic file writes and checksums: a file is either whole or absent."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_error(path: Path, exc: BaseException) -> Exception:
    """The one-line :class:`~collapsekit.errors.RunStateError` of a failed write of ``path``."""
    from .errors import RunStateError

    code = getattr(exc, "errno", None)
    if code is None:                       # e.g. safetensors: "I/O error: ... (os error 28)"
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    reason = "no space left on device" if code == errno.ENOSPC else \
        (os.strerror(code) if code else str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return RunStateError(f"could not write {path}: {reason}. Finished generations are kept; "
                         f"free space (or fix the folder) and re-run the same command to resume.")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write inside the block (an ``OSError``, or a library's error carrying an OS error
    code, such as safetensors' ``SafetensorError``) into one :func:`write_error` naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise write_error(path, exc) from None
    except Exception as exc:
        if re.search(r"os error \d+", str(exc)):
            raise write_error(path, exc) from None
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def array_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` encoding of ``array`` (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
