"""Progress of long commands: a tqdm bar on a terminal, a plain line every few seconds anywhere else.

Why two forms: a command whose output goes to a log file, CI or the systemd journal is not a terminal. There a
tqdm bar either says nothing for minutes or floods the log with carriage-return frames; a user who sees no line
for three minutes takes the command for hung. So on a terminal the bar redraws in place, and elsewhere one
self-contained line (``eval test: 240/600 images (40%), 12.3 images/s, about 29 s left``) is written every
``LINECAM_PROGRESS_INTERVAL_S`` seconds (default 5), plus one when the task starts and one when it ends.

Phases without a count (an ONNX export, a parity check) use :func:`phase`, which prints the phase when it
starts and its duration when it ends.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

INTERVAL_ENV = "LINECAM_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 5.0

__all__ = ["INTERVAL_ENV", "Progress", "phase"]


def _interval_s() -> float:
    """The line interval from ``$LINECAM_PROGRESS_INTERVAL_S`` (an unreadable value falls back to the default)."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 else DEFAULT_INTERVAL_S


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or wrapped stream
        return False


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Counts work done towards ``total`` and reports it (see the module docstring for the two forms).

    ``enabled=False`` reports nothing (``--no-progress``, or ranks other than the first under DDP). Use it as a
    context manager, or call :meth:`close` at the end.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "images", *, stream: TextIO | None = None,
                 enabled: bool = True, interval_s: float | None = None) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = 0
        self.postfix = ""
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = _interval_s() if interval_s is None else interval_s
        self._t0 = time.monotonic()
        self._last_line = self._t0
        self._closed = False
        self._bar: Any = None
        if not enabled:
            return
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream, leave=True)
        else:
            self._write(self._line(start=True))

    def update(self, n: int = 1) -> None:
        """``n`` more units done; writes a line when the interval has passed (non-terminal output)."""
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval_s:
            self._last_line = now
            self._write(self._line())

    def set_postfix(self, **values: Any) -> None:
        """Figures shown after the count (losses, rates), e.g. ``set_postfix(loss="0.123")``."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        """Final line (or close the bar); idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self._write(self._line(end=True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, start: bool = False, end: bool = False) -> str:
        elapsed = time.monotonic() - self._t0
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        if start:
            return f"{self.desc}: {count} {self.unit}"
        pct = f" ({100.0 * self.done / self.total:.0f}%)" if self.total else ""
        if end:
            text = f"{self.desc}: {count} {self.unit}{pct} in {_duration(elapsed)}"
        else:
            rate = self.done / elapsed if elapsed > 0 else 0.0
            shown = f"{rate:.2f}" if rate < 10 else f"{rate:.1f}" if rate < 1000 else f"{rate:.0f}"
            text = f"{self.desc}: {count} {self.unit}{pct}, {shown} {self.unit}/s"
            if self.total and rate > 0:
                text += f", about {_duration((self.total - self.done) / rate)} left"
        return f"{text}, {self.postfix}" if self.postfix else text

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # progress must never stop the work it reports
            print(text, file=self.stream, flush=True)


@contextlib.contextmanager
def phase(desc: str, *, stream: TextIO | None = None, enabled: bool = True) -> Iterator[None]:
    """Report a phase without a count: ``desc...`` when it starts, ``desc: done in 12 s`` when it ends."""
    out = stream if stream is not None else sys.stderr
    t0 = time.monotonic()
    if enabled:
        with contextlib.suppress(OSError, ValueError):
            print(f"{desc} ...", file=out, flush=True)
    yield
    if enabled:
        with contextlib.suppress(OSError, ValueError):
            print(f"{desc}: done in {_duration(time.monotonic() - t0)}", file=out, flush=True)
