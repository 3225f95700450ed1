"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class AdvrunError(Exception):
    """A problem with the user's input, named by the config key or file it concerns."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class ConfigError(AdvrunError):
    """An invalid config value."""


class DataError(AdvrunError):
    """A data set that cannot be loaded (missing files, bad class list, ...)."""


class OutputError(AdvrunError):
    """A result file that cannot be written (disk full, a folder that is not writable); the key
    is the file's path."""


class AttackCheckError(RuntimeError):
    """An attack produced inputs that break its contract (a bug, never the user's fault)."""


class InvalidValue(ValueError):
    """Raised by constructors for a bad argument; the runner prefixes the config group's key."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def require_int(field: str, value: object, minimum: int) -> None:
    """Raise :class:`InvalidValue` unless ``value`` is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidValue(field, f"must be an integer >= {minimum}, got {value!r}")


def require_positive(field: str, value: object, hint: str = "") -> None:
    """Raise :class:`InvalidValue` unless ``value`` is a finite number ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise InvalidValue(field, f"must be a finite number > 0{hint}, got {value!r}")


def require_non_negative(field: str, value: object) -> None:
    """Raise :class:`InvalidValue` unless ``value`` is a finite number ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise InvalidValue(field, f"must be a finite number >= 0, got {value!r}")
