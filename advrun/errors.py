"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Union


class AdvrunError(Exception):
    """A problem with the user's input, named by the config key or file it concerns."""

    def __init__(self, key: str, message: str):
        key = key if len(key) <= CLIPPED_CHARACTERS else f"{key[:CLIPPED_CHARACTERS]}..."
        message = clipped(message)
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


#: Longest run of characters without a space that a message keeps whole (a long path fits).
CLIPPED_CHARACTERS = 240


def clipped(text: str) -> str:
    """``text`` with each run of more than ``CLIPPED_CHARACTERS`` non-space characters (a value of
    100,000 characters echoed back) cut in the middle, saying how long it was."""
    def cut(found: re.Match) -> str:
        run = found.group(0)
        return f"{run[:CLIPPED_CHARACTERS - 40]}...{run[-20:]} ({len(run)} characters)"
    return re.sub(rf"\S{{{CLIPPED_CHARACTERS + 1},}}", cut, text)


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
    """Raised by constructors for a bad argument; the runner prefixes the config group's key
    (:func:`keyed`)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@contextlib.contextmanager
def keyed(prefix: str, error: type[InvalidValue] | type[AdvrunError] = ConfigError, note: str = "") -> Iterator[None]:
    """Report an :class:`InvalidValue` raised in the block under ``prefix``: field ``steps`` of
    ``attack`` becomes ``ConfigError("attack.steps", ...)`` (or, with ``error=InvalidValue``, the
    field ``attacks.0.steps`` of a member). The one place where a field gets its config key."""
    try:
        yield
    except InvalidValue as e:
        raise error(f"{prefix}.{e.field}" if prefix else e.field, e.message + note) from None


#: Longest representation of a value that messages quote in full.
SHOWN_CHARACTERS = 80


def shown(value: object) -> str:
    """``repr(value)`` for a message, cut in the middle when longer than ``SHOWN_CHARACTERS``."""
    text = repr(value)
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS - 20]}...{text[-12:]} ({len(text)} characters)"


def is_number(value: object) -> bool:
    """An int or a float, and not a bool (YAML's ``true`` is not the number 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: Largest magnitude of a finite real-valued field: the tensors compute in float32 (which holds up
#: to about 3.4e38), where a larger step, rate or constant overflows to infinity and then NaN.
LARGEST = 1e30


def _too_large(value: object) -> bool:
    """Beyond ``LARGEST``, or an integer beyond what PyTorch's int64 scalars hold."""
    return is_number(value) and math.isfinite(value) and (abs(value) > LARGEST or isinstance(value, int)
                                                          and abs(value) >= 2**63)


@dataclass(frozen=True)
class Number:
    """A declarative check of a numeric field: a number (an ``integer`` if asked) between ``low``
    and ``high``, each end closed unless ``low_open`` / ``high_open``; NaN never passes, nor a
    finite real beyond ``LARGEST`` in magnitude (infinity passes where the interval holds it).
    ``what`` is how messages describe the allowed values (derived from the interval if empty);
    ``optional`` also accepts ``None`` (null)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False
    what: str = ""

    def holds(self, value: object) -> bool:
        if value is None:
            return self.optional
        if not is_number(value) or (self.integer and not isinstance(value, int)) or value != value:  # NaN
            return False
        if self._beyond(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def description(self) -> str:
        if self.what:
            return self.what
        kind = "an integer" if self.integer else "a finite number" if self.high == math.inf else "a number"
        if self.high == math.inf and self.low > -math.inf:
            text = f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high < math.inf and self.low > -math.inf:
            text = f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        else:
            text = kind
        return f"{text} or null" if self.optional else text

    def _beyond(self, value: object) -> bool:
        """Too large for the arithmetic that uses it: a real beyond ``LARGEST``; an integer beyond
        PyTorch's int64 where the interval does not allow more (seeds do)."""
        if self.integer:
            return self.high == math.inf and abs(value) >= 2**63
        return _too_large(value)

    def check(self, field: str, value: object) -> None:
        """Raise :class:`InvalidValue` naming ``field`` unless ``value`` holds."""
        if not self.holds(value):
            if self.integer and isinstance(value, int) and self._beyond(value) and value >= self.low:
                raise InvalidValue(field, f"must be {self.description()} and at most 2**63 - 1, got {shown(value)}")
            if not self.integer and _too_large(value) and self.low <= value <= self.high:
                raise InvalidValue(field, f"must be at most {LARGEST:g} in magnitude (float32 arithmetic "
                                          f"overflows beyond; an integer at most 2**63 - 1), got {shown(value)}")
            raise InvalidValue(field, f"must be {self.description()}, got {shown(value)}")


@dataclass(frozen=True)
class Switch:
    """A declarative check of a true/false field."""

    def check(self, field: str, value: object) -> None:
        if not isinstance(value, bool):
            raise InvalidValue(field, f"must be true or false, got {shown(value)}")


@dataclass(frozen=True)
class Choice:
    """A declarative check of a field that takes one of ``options``."""

    options: tuple[Any, ...]
    what: str = "unknown value"

    def check(self, field: str, value: object) -> None:
        if isinstance(value, bool) or value not in self.options:
            raise InvalidValue(field, f"{self.what} {shown(value)}; choose one of {list(self.options)}")


Check = Union[Number, Switch, Choice]


def check_fields(values: Mapping[str, Any] | object, checks: Mapping[str, Check]) -> None:
    """Check each field named in ``checks`` (a key of a mapping, or an attribute of an object);
    the first bad one raises :class:`InvalidValue` naming it."""
    for name, check in checks.items():
        value = values.get(name) if isinstance(values, Mapping) else getattr(values, name)
        check.check(name, value)


NON_NEGATIVE = Number(0, math.inf, high_open=True)
#: A seed: what every generator of a run accepts (PyTorch's take at most 2**64 - 1).
SEED = Number(0, 2**64 - 1, integer=True, what=f"an integer in [0, {2**64 - 1}]")
#: Largest perturbation budget: the attacks compute in float32, where the range
#: ``[-eps, eps]`` of a random start must fit (float32 holds up to about 3.4e38), and any
#: budget beyond the diameter of the data's bounds perturbs no more than that diameter does.
MAX_BUDGET = LARGEST
BUDGET = Number(0, MAX_BUDGET, what=f"finite numbers in [0, {MAX_BUDGET:g}] (float32 arithmetic overflows beyond)")


def require_int(field: str, value: object, minimum: int) -> None:
    """Raise :class:`InvalidValue` unless ``value`` is an integer ``>= minimum``."""
    Number(minimum, integer=True).check(field, value)


def require_positive(field: str, value: object, hint: str = "") -> None:
    """Raise :class:`InvalidValue` unless ``value`` is a finite number ``> 0``."""
    Number(0, math.inf, low_open=True, high_open=True, what=f"a finite number > 0{hint}").check(field, value)


def require_non_negative(field: str, value: object) -> None:
    """Raise :class:`InvalidValue` unless ``value`` is a finite number ``>= 0``."""
    NON_NEGATIVE.check(field, value)
