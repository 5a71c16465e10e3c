"""Where the operator page listens, written by ``linecam ui`` and read by ``linecam run`` to print it."""

from __future__ import annotations

from pathlib import Path

from linecam.files import atomic_write

UI_URL_FILE = "ui-url"

__all__ = ["UI_URL_FILE", "read_ui_url", "write_ui_url"]


def write_ui_url(folder: Path, url: str) -> None:
    atomic_write(folder / UI_URL_FILE, (url + "\n").encode())


def read_ui_url(folder: Path) -> str | None:
    try:
        return (folder / UI_URL_FILE).read_text().strip() or None
    except OSError:
        return None
