"""The base of every configuration and message model: strict (unknown keys refused) and frozen.

Why strict: a misspelt key on a production line (``dealine_ms``) must stop the start-up with the file and field
named, not silently fall back to a default. Why frozen: a config slice handed to a process never changes under
it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["ConfigError", "Strict"]


class Strict(BaseModel):
    """A pydantic model that refuses unknown keys and cannot be changed after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field path."""
