"""The one message codec of the line: frames, announcements and verdicts.

Every process that talks over ZeroMQ uses these types, so a schema change is made once, here.
Frames travel as a two-part message ``[header JSON, raw pixel buffer]`` (the buffer C-contiguous and
sent without an extra copy); events (announcements, overload notices, verdicts) are single-part JSON.
Decoding never trusts the sender: a malformed frame raises :class:`BadFrame` carrying whatever identity
could still be read, so the worker can answer it with a ``bad_frame`` verdict instead of crashing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


INT64_MAX = 2**63 - 1
#: ids and wall-clock nanoseconds travel as 64-bit integers everywhere (audit, PLC registers, metrics): a
#: message claiming a larger one is refused at the door.
Int64 = Annotated[int, Field(ge=-(2**63), le=INT64_MAX)]


class Truth(Strict):
    """Ground truth that a synthetic (or replayed, labelled) source knows; used only for demo statistics."""

    line_label: Literal["good", "defect"]
    kind: str = "good"


class FrameHeader(Strict):
    """Header of one camera frame. ``(camera, seq)`` identifies the frame everywhere on the line."""

    schema_version: int = SCHEMA_VERSION
    camera: str
    seq: int = Field(ge=0, le=INT64_MAX)
    slot: int = Field(ge=0, le=INT64_MAX, description="product/slot id given by the PLC tracker or counted by acquire")
    t_capture_ns: Int64
    #: when the verdict is due (capture + gate deadline), set once by acquire at capture; None only from a
    #: producer that predates it (the worker then works it out from its config, the same way).
    deadline_ns: Int64 | None = None
    t_sent_ns: Int64 = 0
    shape: tuple[int, ...]
    dtype: str
    pixel_format: str
    truth: Truth | None = None


class Announcement(Strict):
    """Acquire tells the gate a frame exists (before offering it to the worker) and when its verdict is due."""

    type: Literal["announce"] = "announce"
    schema_version: int = SCHEMA_VERSION
    camera: str
    seq: Int64
    slot: Int64
    t_capture_ns: Int64
    deadline_ns: Int64
    truth: Truth | None = None


class Overload(Strict):
    """Acquire could not hand a frame to the worker (high-water mark): the gate rejects it at once."""

    type: Literal["overload"] = "overload"
    schema_version: int = SCHEMA_VERSION
    camera: str
    seq: Int64
    slot: Int64
    t_ns: Int64


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


class CameraStopped(Strict):
    """Acquire stops on purpose (shutdown, end of a replayed folder): no frames are expected from it any more, so
    the gate does not report the camera as stalled."""

    type: Literal["camera_stopped"] = "camera_stopped"
    schema_version: int = SCHEMA_VERSION
    camera: str
    t_ns: Int64


Event = Annotated[Announcement | Overload | Verdict | CameraStopped, Field(discriminator="type")]


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


MAX_HEADER_BYTES = 4096
"""A frame header is a few hundred bytes of JSON; anything longer is refused before it is parsed."""
MAX_DIMENSION = 65_535
"""No camera frame has a side or channel count above this; a header that claims one is refused."""


@dataclass(frozen=True)
class FrameLimits:
    """What a frame may claim before anything is parsed or allocated for it.

    ``sizes`` (when given) lists the cameras of the line config: a frame from another camera is refused, and for
    a camera whose frame size is configured, ``(height, width)``, a header claiming another size is refused.
    ``max_frame_bytes`` caps the pixel buffer of every frame (the worker sets the frames socket's ZeroMQ
    ``MAXMSGSIZE`` from the same figure, so a larger message never reaches Python).
    """

    max_header_bytes: int = MAX_HEADER_BYTES
    max_frame_bytes: int = 256 * 2**20
    sizes: Mapping[str, tuple[int, int] | None] | None = None


def decode_frame(parts: Sequence[Any], limits: FrameLimits | None = None) -> tuple[FrameHeader, np.ndarray]:
    """Decode ``[header, buffer]`` into a header and a read-only view of the pixels (no copy).

    Raises :class:`BadFrame` for every way a frame can be wrong, and nothing else, whatever the bytes: part count,
    header size, header JSON (however deeply nested), schema version, dtype, pixel format, channel count, a
    camera or a frame size the line does not have (``limits``), or a buffer whose size does not match the header.
    """
    limits = limits or FrameLimits()
    if len(parts) != 2:
        raise BadFrame(f"expected 2 message parts, got {len(parts)}")
    raw = _as_bytes_like(parts[0])
    if raw.nbytes > limits.max_header_bytes:
        raise BadFrame(f"header of {raw.nbytes} bytes is longer than {limits.max_header_bytes}")
    try:
        loose = json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadFrame(f"header is not JSON: {type(exc).__name__}: {str(exc)[:120]}") from None
    ident = _identity(loose)
    try:
        header = FrameHeader.model_validate(loose)
    except (ValidationError, RecursionError) as exc:
        fields = (", ".join(".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in exc.errors())
                  if isinstance(exc, ValidationError) else "nested too deeply")
        raise BadFrame(f"header invalid ({fields[:300]})", *ident) from None
    if header.schema_version != SCHEMA_VERSION:
        raise BadFrame(f"schema_version {header.schema_version} != {SCHEMA_VERSION}", *ident)
    if header.dtype not in FRAME_DTYPES:
        raise BadFrame(f"dtype {header.dtype!r} not in {FRAME_DTYPES}", *ident)
    channels = PIXEL_FORMATS.get(header.pixel_format)
    if channels is None:
        raise BadFrame(f"pixel_format {header.pixel_format!r} not in {sorted(PIXEL_FORMATS)}", *ident)
    shape = header.shape
    if len(shape) not in (2, 3) or any(not 0 < d <= MAX_DIMENSION for d in shape):
        raise BadFrame(f"shape {list(shape)[:4]} is not (H, W) or (H, W, C) with sides 1..{MAX_DIMENSION}", *ident)
    got_channels = 1 if len(shape) == 2 else shape[2]
    if got_channels != channels:
        raise BadFrame(f"pixel_format {header.pixel_format} needs {channels} channels, shape has {got_channels}",
                       *ident)
    if limits.sizes is not None:
        if header.camera not in limits.sizes:
            raise BadFrame(f"camera {header.camera[:64]!r} is not in the line config", *ident)
        size = limits.sizes[header.camera]
        if size is not None and tuple(shape[:2]) != size:
            raise BadFrame(f"shape {list(shape)} does not match camera {header.camera}'s configured "
                           f"{size[1]}x{size[0]} frames", *ident)
    expected = math.prod(shape) * np.dtype(header.dtype).itemsize  # Python ints: no overflow
    if expected > limits.max_frame_bytes:
        raise BadFrame(f"shape {list(shape)} needs {expected} bytes, more than the {limits.max_frame_bytes} a frame "
                       "may have", *ident)
    payload = _as_bytes_like(parts[1])
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


def encode_event(event: Announcement | Overload | Verdict | CameraStopped) -> bytes:
    """Serialise an event for a single-part ZeroMQ message."""
    return event.model_dump_json().encode()


def decode_event(data: bytes) -> Announcement | Overload | Verdict | CameraStopped:
    """Parse an event; raises :class:`BadMessage` naming what was wrong."""
    try:
        return _EventEnvelope.model_validate_json(b'{"event":' + bytes(data) + b"}").event
    except ValidationError as exc:
        raise BadMessage(f"undecodable event: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from None
