"""Writing files safely: so that no reader and no crash ever sees half of one, and key files with exactly the mode
asked for."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write", "write_key_file"]


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


def write_key_file(path: str | os.PathLike[str], data: bytes, mode: int, force: bool = False) -> None:
    """Create a key file with exactly ``mode`` (0600 for secrets, whatever the umask); an existing file is
    refused unless ``force``: overwriting a key silently would lock out every host that holds its pair."""
    target = Path(path)
    if target.exists() and not force:
        raise FileExistsError(f"{target}: key file exists; refusing to overwrite (use --force)")
    if target.exists():
        target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed or (for a 0644 request) not widened it
        os.write(fd, data)
    finally:
        os.close(fd)
