"""GenICam cameras through harvesters and a GenTL producer (``.cti``).

Rules from the field (see NOTES.md): the ImageAcquirer is created once per process (create/destroy
cycles leak native memory in some producers), every buffer is requeued (``with`` block), its pixels are
copied once into a ring this module owns (the producer overwrites a requeued buffer), frame-id gaps are
counted, and a lost device ends the process with an error so that systemd restarts it cleanly.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import numpy as np

from linecam.config.sources import GenicamSourceConfig
from linecam.runtime.messages import PIXEL_FORMATS
from linecam.runtime.sources.base import BufferRing, GapCounter, GrabbedFrame, SourceError

log = logging.getLogger(__name__)

#: GenTL DEVICE_ACCESS_STATUS values meaning "open by us" (OPEN_READWRITE, OPEN_READONLY).
_OPEN_STATUSES = (5, 6)
#: channels per pixel and dtype of the GenICam pixel formats this source can deliver.
_FORMATS: dict[str, tuple[int, str]] = {
    "Mono8": (1, "uint8"),
    "Mono16": (1, "uint16"),
    "RGB8": (3, "uint8"),
    "BGR8": (3, "uint8"),
    "RGBa8": (4, "uint8"),
    "BGRa8": (4, "uint8"),
}


class GenicamSource:
    """A :class:`~linecam.runtime.sources.base.FrameSource` over one GenICam device."""

    def __init__(self, config: GenicamSourceConfig, *, ring_depth: int = 16) -> None:
        if config.pixel_format not in _FORMATS or config.pixel_format not in PIXEL_FORMATS:
            raise ValueError(
                f"source.pixel_format: {config.pixel_format!r} is not supported (use one of {sorted(_FORMATS)})"
            )
        self.config = config
        self._ring = BufferRing(max(ring_depth, 2))
        self._harvester: Any = None
        self._ia: Any = None
        self._streaming = False
        self._gaps = GapCounter()
        self.frames = 0
        self.incomplete = 0
        self.applied: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}
        self.device: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> None:
        """Load the producer, pick the device, create the acquirer once, apply settings, start."""
        from harvesters.core import Harvester  # heavy native import: only for genicam cameras

        cti = self.config.cti
        if not cti.is_file():
            raise SourceError(f"source.cti: GenTL producer {cti} does not exist")
        self._harvester = Harvester()
        try:
            self._harvester.add_file(str(cti), check_existence=True, check_validity=True)
            self._harvester.update()
        except Exception as exc:  # the producer's own exception types vary
            raise SourceError(f"source.cti: cannot load GenTL producer {cti}: {exc}") from exc
        info = self._select_device()
        previous_sigint = signal.getsignal(signal.SIGINT)
        try:
            self._ia = self._harvester.create(info)
        except Exception as exc:
            raise SourceError(f"cannot open GenICam device {self.device}: {exc}") from exc
        finally:
            # harvesters installs its own SIGINT handler on the main thread; the process decides.
            if previous_sigint is not None:
                signal.signal(signal.SIGINT, previous_sigint)
        self._apply_settings()
        self._ia.num_buffers = self.config.num_buffers
        self.start()

    def start(self) -> None:
        """(Re)start streaming on the existing acquirer (never re-created)."""
        if self._ia is None:
            raise SourceError("GenICam source is not open")
        if not self._streaming:
            self._ia.start()
            self._streaming = True
            self._gaps.reset()  # a restart resets the device counter on some producers

    def stop(self) -> None:
        """Stop streaming but keep the acquirer; ``grab`` then returns ``None`` after its timeout."""
        if self._ia is not None and self._streaming:
            self._ia.stop()
            self._streaming = False

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self._ia is not None:
                self._ia.destroy()
                self._ia = None
            if self._harvester is not None:
                self._harvester.reset()
                self._harvester = None

    # -- device selection and settings ------------------------------------------------------------
    def _select_device(self) -> Any:
        infos = list(self._harvester.device_info_list)
        if not infos:
            raise SourceError(f"source.cti: producer {self.config.cti} lists no devices")
        described = [_device_identity(i) for i in infos]
        c = self.config
        if c.serial is not None:
            matches = [i for i, d in zip(infos, described, strict=True) if d.get("serial") == c.serial]
            key = f"serial={c.serial!r}"
        elif c.user_name is not None:
            matches = [i for i, d in zip(infos, described, strict=True) if d.get("user_name") == c.user_name]
            key = f"user_name={c.user_name!r}"
        else:
            index = c.device_index or 0
            if index >= len(infos):
                raise SourceError(f"source.device_index: {index} out of range, producer lists {len(infos)} devices")
            matches = [infos[index]]
            key = f"device_index={index}"
        if len(matches) != 1:
            raise SourceError(f"source: {key} matches {len(matches)} of the devices {described}")
        self.device = _device_identity(matches[0])
        return matches[0]

    def _apply_settings(self) -> None:
        """Write the configured features the node map has; report those it lacks (never silently)."""
        nm = self._ia.remote_device.node_map
        c = self.config
        wanted: list[tuple[str, Any]] = [("PixelFormat", c.pixel_format)]
        if c.width is not None:
            wanted.append(("Width", c.width))
        if c.height is not None:
            wanted.append(("Height", c.height))
        if c.exposure_us is not None:
            wanted.append(("ExposureTime", float(c.exposure_us)))
        if c.frame_rate is not None:
            if _has(nm, "AcquisitionFrameRateEnable"):
                wanted.append(("AcquisitionFrameRateEnable", True))
            wanted.append(("AcquisitionFrameRate", float(c.frame_rate)))
        if c.trigger is not None:
            if _has(nm, "TriggerSelector"):
                wanted.append(("TriggerSelector", "FrameStart"))
            wanted.append(("TriggerMode", c.trigger.mode))
            if c.trigger.mode == "On":
                wanted += [("TriggerSource", c.trigger.source), ("TriggerActivation", c.trigger.activation)]
        for name, value in wanted:
            if not _has(nm, name):
                self.unavailable[name] = "not in the device node map"
                continue
            try:
                getattr(nm, name).value = value
                self.applied[name] = getattr(nm, name).value
            except Exception as exc:
                self.unavailable[name] = f"write failed: {exc}"
        if "PixelFormat" in self.unavailable:
            raise SourceError(f"device {self.device}: cannot set PixelFormat={c.pixel_format}: "
                              f"{self.unavailable['PixelFormat']}")
        for name, why in self.unavailable.items():
            log.warning("camera %s: setting %s unavailable (%s)", self.device.get("id"), name, why)

    # -- frames ----------------------------------------------------------------------------------
    def grab(self, timeout_s: float) -> GrabbedFrame | None:
        if self._ia is None:
            raise SourceError("GenICam source is not open")
        try:
            buffer = self._ia.try_fetch(timeout=max(timeout_s, 1e-3))
        except Exception as exc:
            raise SourceError(f"device {self.device}: fetch failed: {exc}") from exc
        if buffer is None:
            self._check_device()
            return None
        t_capture_ns = time.time_ns()  # host wall clock: the line's deadlines are on this clock
        with buffer:  # requeues the buffer on every path
            frame_id = _optional_int(buffer.module, "frame_id")
            device_ts = _optional_int(buffer, "timestamp_ns")
            components = buffer.payload.components if buffer.payload is not None else []
            if not components:
                self.incomplete += 1
                return None
            comp = components[0]
            channels, dtype = _FORMATS.get(comp.data_format, (0, ""))
            if not channels:
                raise SourceError(f"device {self.device}: delivered pixel format {comp.data_format!r}, "
                                  f"configured {self.config.pixel_format}")
            shape: tuple[int, ...] = (comp.height, comp.width) if channels == 1 else (comp.height, comp.width,
                                                                                       channels)
            data = np.asarray(comp.data)
            if data.size != int(np.prod(shape)):
                self.incomplete += 1
                log.warning("camera %s: frame %s has %d values, expected %s", self.device.get("id"), frame_id,
                            data.size, shape)
                return None
            image, hold = self._ring.take(shape, dtype)
            np.copyto(image, data.reshape(shape), casting="no")
        self.frames += 1
        self._gaps.update(frame_id)
        return GrabbedFrame(image=image, pixel_format=comp.data_format, t_capture_ns=t_capture_ns,
                            device_frame_id=frame_id, device_timestamp_ns=device_ts, hold=hold)

    def _check_device(self) -> None:
        """There is no device-lost event in GenTL: poll the access status after a fetch timeout."""
        try:
            status = self._ia.device.module.access_status
        except Exception as exc:
            raise SourceError(f"device {self.device}: access status unreadable ({exc}): device lost?") from exc
        if status not in _OPEN_STATUSES:
            raise SourceError(f"device {self.device}: access status {status}: device lost")

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "genicam",
            "cti": str(self.config.cti),
            "device": dict(self.device),
            "applied": dict(self.applied),
            "unavailable": dict(self.unavailable),
            "frames": self.frames,
            "frame_gaps": self._gaps.gaps,
            "incomplete": self.incomplete,
            "ring_fallbacks": self._ring.fallbacks,
        }


def _has(node_map: Any, name: str) -> bool:
    try:
        return hasattr(node_map, name)
    except Exception:
        return False


def _optional_int(obj: Any, attr: str) -> int | None:
    """Read a GenTL property that producers may not support (they raise instead of returning None)."""
    try:
        value = getattr(obj, attr)
    except Exception:
        return None
    return int(value) if value is not None else None


def _device_identity(info: Any) -> dict[str, str]:
    """Whatever identity fields the producer supports (unsupported ones raise NotAvailableException)."""
    out: dict[str, str] = {}
    for key, attr in (("id", "id_"), ("serial", "serial_number"), ("user_name", "user_defined_name"),
                      ("model", "model"), ("vendor", "vendor")):
        try:
            value = getattr(info, attr)
        except Exception:
            continue
        if value:
            out[key] = str(value)
    return out
