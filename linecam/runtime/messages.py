"""The one message codec of the line: frames, announcements and verdicts.

Every process that talks over ZeroMQ uses these types, so a schema change is made once, here.
Frames travel as a two-part message ``[header JSON, raw pixel buffer]`` (the buffer C-contiguous and
sent without an extra copy); events (announcements, overload notices, verdicts) are single-part JSON.
Decoding never trusts the sender: a malformed frame raises :class:`BadFrame` carrying whatever identity
could still be read, so the worker can answer it with a ``bad_frame`` verdict instead of crashing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from linecam.config.base import Strict

SCHEMA_VERSION = 1

Decision = Literal["accept", "reject"]
Reason = Literal["ok", "anomaly", "timeout", "overload", "bad_frame", "error"]

#: dtypes a camera frame may carry; anything else is a bad frame.
FRAME_DTYPES = ("uint8", "uint16")
#: pixel formats linecam understands, with the channel count each implies.
PIXEL_FORMATS: dict[str, int] = {"Mono8": 1, "RGB8": 3, "BGR8": 3, "RGBa8": 4, "BGRa8": 4, "Mono16": 1}


def now_ns() -> int:
    """Wall-clock nanoseconds: comparable across the processes of one host (and NTP-synced hosts)."""
    return time.time_ns()


class Truth(Strict):
    """Ground truth that a synthetic (or replayed, labelled) source knows; used only for demo statistics."""

    line_label: Literal["good", "defect"]
    kind: str = "good"


class FrameHeader(Strict):
    """Header of one camera frame. ``(camera, seq)`` identifies the frame everywhere on the line."""

    schema_version: int = SCHEMA_VERSION
    camera: str
    seq: int = Field(ge=0)
    slot: int = Field(ge=0, description="product/slot id given by the PLC tracker or counted by acquire")
    t_capture_ns: int
    #: when the verdict is due (capture + gate deadline), set once by acquire at capture; None only from a
    #: producer that predates it (the worker then works it out from its config, the same way).
    deadline_ns: int | None = None
    t_sent_ns: int = 0
    shape: tuple[int, ...]
    dtype: str
    pixel_format: str
    truth: Truth | None = None


class Announcement(Strict):
    """Acquire tells the gate a frame exists (before offering it to the worker) and when its verdict is due."""

    type: Literal["announce"] = "announce"
    schema_version: int = SCHEMA_VERSION
    camera: str
    seq: int
    slot: int
    t_capture_ns: int
    deadline_ns: int
    truth: Truth | None = None


class Overload(Strict):
    """Acquire could not hand a frame to the worker (high-water mark): the gate rejects it at once."""

    type: Literal["overload"] = "overload"
    schema_version: int = SCHEMA_VERSION
    camera: str
    seq: int
    slot: int
    t_ns: int


class Verdict(Strict):
    """One decision for one frame. Scores and thresholds are per inspection region."""

    type: Literal["verdict"] = "verdict"
    schema_version: int = SCHEMA_VERSION
    camera: str
    seq: int
    slot: int
    decision: Decision
    reason: Reason
    scores: dict[str, float] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(default_factory=dict)
    model_version: str = ""
    timestamps: dict[str, int] = Field(default_factory=dict, description="stage name -> wall-clock ns")
    detail: str = ""


Event = Annotated[Announcement | Overload | Verdict, Field(discriminator="type")]


class _EventEnvelope(BaseModel):
    event: Event


class BadFrame(ValueError):
    """A frame that cannot be inspected. ``camera``/``seq``/``slot`` are filled when the header was readable."""

    def __init__(self, reason: str, camera: str = "?", seq: int = -1, slot: int = -1) -> None:
        super().__init__(f"bad frame camera={camera} seq={seq}: {reason}")
        self.reason = reason
        self.camera = camera
        self.seq = seq
        self.slot = slot


class BadMessage(ValueError):
    """An event message that does not decode; the receiver counts and drops it."""


def encode_frame(header: FrameHeader, image: np.ndarray) -> list[Any]:
    """Return the multipart ``[header, buffer]`` for ``socket.send_multipart(parts, copy=False)``.

    The image must already be C-contiguous: making a hidden copy here would defeat zero-copy sends of
    multi-megabyte frames, so a non-contiguous array is refused instead.
    """
    if not image.flags.c_contiguous:
        raise ValueError(f"frame camera={header.camera} seq={header.seq}: image is not C-contiguous")
    if tuple(image.shape) != tuple(header.shape) or str(image.dtype) != header.dtype:
        raise ValueError(
            f"frame camera={header.camera} seq={header.seq}: header says {header.shape}/{header.dtype}, "
            f"image is {image.shape}/{image.dtype}"
        )
    return [header.model_dump_json().encode(), image.data.cast("B")]


def _as_bytes_like(part: Any) -> memoryview:
    buf = getattr(part, "buffer", None)  # zmq.Frame
    return memoryview(buf if buf is not None else part)


def decode_frame(parts: Sequence[Any]) -> tuple[FrameHeader, np.ndarray]:
    """Decode ``[header, buffer]`` into a header and a read-only view of the pixels (no copy).

    Raises :class:`BadFrame` for every way a frame can be wrong: part count, header JSON, schema version,
    dtype, pixel format, channel count, or a buffer whose size does not match the header.
    """
    if len(parts) != 2:
        raise BadFrame(f"expected 2 message parts, got {len(parts)}")
    raw_header = bytes(_as_bytes_like(parts[0]))
    try:
        loose = json.loads(raw_header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadFrame(f"header is not JSON: {exc}") from None
    ident = _identity(loose)
    try:
        header = FrameHeader.model_validate(loose)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in exc.errors())
        raise BadFrame(f"header invalid ({fields})", *ident) from None
    if header.schema_version != SCHEMA_VERSION:
        raise BadFrame(f"schema_version {header.schema_version} != {SCHEMA_VERSION}", *ident)
    if header.dtype not in FRAME_DTYPES:
        raise BadFrame(f"dtype {header.dtype!r} not in {FRAME_DTYPES}", *ident)
    channels = PIXEL_FORMATS.get(header.pixel_format)
    if channels is None:
        raise BadFrame(f"pixel_format {header.pixel_format!r} not in {sorted(PIXEL_FORMATS)}", *ident)
    shape = header.shape
    if len(shape) not in (2, 3) or any(d <= 0 for d in shape):
        raise BadFrame(f"shape {shape} is not (H, W) or (H, W, C)", *ident)
    got_channels = 1 if len(shape) == 2 else shape[2]
    if got_channels != channels:
        raise BadFrame(f"pixel_format {header.pixel_format} needs {channels} channels, shape has {got_channels}",
                       *ident)
    payload = _as_bytes_like(parts[1])
    expected = int(np.prod(shape)) * np.dtype(header.dtype).itemsize
    if payload.nbytes != expected:
        raise BadFrame(f"payload has {payload.nbytes} bytes, header shape {shape} needs {expected}", *ident)
    image = np.frombuffer(payload, dtype=header.dtype).reshape(shape)
    image.flags.writeable = False  # it aliases the message buffer; consumers copy before they modify
    return header, image


def _identity(loose: Any) -> tuple[str, int, int]:
    """Best-effort (camera, seq, slot) from an unvalidated header, so even a bad frame gets its verdict."""
    if not isinstance(loose, dict):
        return "?", -1, -1
    camera = loose.get("camera")
    seq = loose.get("seq")
    slot = loose.get("slot")
    return (
        camera if isinstance(camera, str) else "?",
        seq if isinstance(seq, int) else -1,
        slot if isinstance(slot, int) else -1,
    )


def encode_event(event: Announcement | Overload | Verdict) -> bytes:
    """Serialise an event for a single-part ZeroMQ message."""
    return event.model_dump_json().encode()


def decode_event(data: bytes) -> Announcement | Overload | Verdict:
    """Parse an event; raises :class:`BadMessage` naming what was wrong."""
    try:
        return _EventEnvelope.model_validate_json(b'{"event":' + bytes(data) + b"}").event
    except ValidationError as exc:
        raise BadMessage(f"undecodable event: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from None
