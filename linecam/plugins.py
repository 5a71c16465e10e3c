"""One plug-in pattern for every kind of plug-in: inference backends, camera sources and PLC links.

A :class:`Registry` maps a name (a backend name, a source or PLC ``kind`` from the config) to a factory. The
built-ins are registered by reference, ``"module:attribute"``, and imported only when first asked for: a
synthetic camera process never loads the GenTL libraries, the gate never loads torch, and a GPU backend's
module is imported only to probe it. Third-party plug-ins register the object itself. A name registered twice
with a different target is an error, never a silent replacement.
"""

from __future__ import annotations

import importlib
import threading
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Named plug-ins of one kind (``what`` names the kind in errors, e.g. "camera source")."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._targets: dict[str, T | str] = {}
        self._lock = threading.Lock()

    def add(self, name: str, target: T | str) -> None:
        """Register ``target`` (an object, or ``"module:attribute"`` imported on first use) under ``name``."""
        with self._lock:
            existing = self._targets.get(name)
            if existing is not None and existing is not target and existing != target:
                raise ValueError(f"{self.what} {name!r} is already registered by {existing!r}")
            self._targets[name] = target

    def names(self) -> list[str]:
        """Every registered name, loaded or not, in registration order."""
        return list(self._targets)

    def get(self, name: str) -> T:
        """The plug-in called ``name`` (imported now if it was registered by reference)."""
        try:
            target = self._targets[name]
        except KeyError:
            raise ValueError(f"unknown {self.what} {name!r}; registered: {', '.join(sorted(self._targets))}") from None
        if isinstance(target, str):
            module_name, _, attribute = target.partition(":")
            obj: object = importlib.import_module(module_name)
            for part in attribute.split("."):
                obj = getattr(obj, part)
            with self._lock:
                self._targets[name] = obj  # type: ignore[assignment]
            return obj  # type: ignore[return-value]
        return target

    def load_all(self) -> dict[str, T]:
        """Every plug-in by name, importing those registered by reference."""
        return {name: self.get(name) for name in self.names()}
