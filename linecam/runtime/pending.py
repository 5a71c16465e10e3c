"""The gate's journal of announced products not yet decided, so a gate killed with SIGKILL loses none.

Why: the gate holds pending announcements in memory; killed, it took them along, and those products never got
an audit line (one per camera in the fault suite's kill -9 row). Every announcement is appended to
``<runtime dir>/gate-pending.jsonl`` before it is handled; every few seconds the file is rewritten with only the
products still pending, so it stays small. A starting gate reads it, looks for each product in the tail of the
audit log, and rejects the ones without an audit line (``timeout``, detail ``gate restarted``): their deadlines
have passed, so the PLC gets nothing for them and rejects them by its window, and the audit is complete.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from linecam.files import atomic_write
from linecam.runtime.messages import Announcement, BadMessage, decode_event, encode_event

log = logging.getLogger(__name__)

PENDING_FILE = "gate-pending.jsonl"
COMPACT_EVERY_S = 5.0
#: how much of the audit log's end is read to find the products a killed gate did decide
AUDIT_TAIL_BYTES = 8 * 2**20

__all__ = ["PENDING_FILE", "PendingJournal", "undecided"]


class PendingJournal:
    """Append-only record of announcements, compacted to the pending ones every ``COMPACT_EVERY_S``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] = open(path, "ab")  # noqa: SIM115 - held open for the gate's life
        self._next_compact = time.monotonic() + COMPACT_EVERY_S

    def add(self, announcement: Announcement) -> None:
        self._file.write(encode_event(announcement) + b"\n")
        self._file.flush()

    def compact(self, pending: Iterable[Announcement], force: bool = False) -> None:
        """Rewrite the journal with only ``pending`` (the gate's undecided products), at most every few seconds."""
        now = time.monotonic()
        if not force and now < self._next_compact:
            return
        self._next_compact = now + COMPACT_EVERY_S
        self._file.close()
        atomic_write(self.path, b"".join(encode_event(a) + b"\n" for a in pending))
        self._file = open(self.path, "ab")  # noqa: SIM115

    def close(self) -> None:
        self._file.close()


def _audit_keys(audit: Path) -> set[tuple[str, int]]:
    try:
        with audit.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - AUDIT_TAIL_BYTES))
            tail = f.read()
    except OSError:
        return set()
    keys = set()
    for line in tail.splitlines():
        try:
            record = json.loads(line)
            keys.add((str(record["camera"]), int(record["seq"])))
        except (ValueError, KeyError, TypeError):
            continue  # the first line of the tail may be cut
    return keys


def undecided(journal: Path, audit: Path) -> list[Announcement]:
    """Announcements in ``journal`` that have no line in the end of ``audit`` (what a killed gate left)."""
    try:
        lines = journal.read_bytes().splitlines()
    except OSError:
        return []
    found: dict[tuple[str, int], Announcement] = {}
    for line in lines:
        try:
            event = decode_event(line)
        except BadMessage:
            continue  # a line cut by the kill
        if isinstance(event, Announcement):
            found[(event.camera, event.seq)] = event
    if not found:
        return []
    done = _audit_keys(audit)
    return [a for key, a in found.items() if key not in done]
