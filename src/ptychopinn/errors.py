"""Exception hierarchy. The library raises these; only the CLI turns them into exit codes."""

from __future__ import annotations


class PtychoPINNError(Exception):
    """Base class of every error this package raises on purpose (user-facing)."""


class DataError(PtychoPINNError, ValueError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(PtychoPINNError, ValueError):
    """A configuration value or combination is invalid."""


class BundleError(PtychoPINNError):
    """A model bundle cannot be read, is unsafe, or does not fit the request."""


class OutputError(PtychoPINNError):
    """An output cannot be written: a path that is not a directory, a full or read-only disk."""


class OutputExistsError(OutputError):
    """An output would overwrite an earlier run's results."""
