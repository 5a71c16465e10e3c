"""Writing a file so that no reader and no crash ever sees half of it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> int:
    """Write ``data`` to a hidden temporary name beside ``path``, then rename it into place; returns the size.

    ``durable`` also flushes the bytes to the disk before the rename (model cards, weights: files a power cut
    must not leave empty); the archive writer, which writes many small files off the hot path, skips that.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, target)
    return len(data)
