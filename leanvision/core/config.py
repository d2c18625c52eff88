"""Base class for method configs: plain dataclasses that validate themselves."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any


@dataclasses.dataclass
class MethodConfig:
    """A method's settings. Subclasses are dataclasses and override :meth:`validate`.

    Validation runs in ``__post_init__``, so an invalid config can never be built, and its
    error names the field, the value given and what is allowed.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError``/``TypeError`` for a bad field. Default: nothing to check."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` lies in the given interval.

    >>> check_range("keep", 1.5, 0, 1, low_inclusive=False)
    Traceback (most recent call last):
    ValueError: keep=1.5 is out of range; allowed: (0, 1]
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        interval = (
            f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        )
        raise ValueError(f"{name}={value!r} is out of range; allowed: {interval}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``.

    >>> check_choice("method", "lcm", ["lcm", "tcd"])
    >>> check_choice("method", "ddim", ["lcm", "tcd"])
    Traceback (most recent call last):
    ValueError: method='ddim' is not allowed; choose one of ['lcm', 'tcd']
    """
    options = list(choices)
    if value not in options:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {options}")


def check_token_count_and_ratio(tokens: Any, keep: Any) -> None:
    """``tokens`` is None or an int >= 1, and ``keep`` None or a ratio in (0, 1].

    >>> check_token_count_and_ratio(64, None)
    >>> check_token_count_and_ratio(None, 0)
    Traceback (most recent call last):
    ValueError: keep=0 is out of range; allowed: (0.0, 1.0]
    """
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise TypeError(f"tokens must be an int, got {tokens!r}")
        check_range("tokens", tokens, low=1)
    if keep is not None:
        check_range("keep", keep, low=0.0, high=1.0, low_inclusive=False)


def check_budget(tokens: Any, keep: Any, renumber: Any) -> None:
    """A token budget: ``tokens`` (an int >= 1) or ``keep`` (a ratio in (0, 1]), not both,
    and a bool ``renumber``."""
    if tokens is not None and keep is not None:
        raise ValueError(f"pass tokens= or keep=, not both (got {tokens}, {keep})")
    check_token_count_and_ratio(tokens, keep)
    if not isinstance(renumber, bool):
        raise TypeError(f"renumber must be a bool, got {renumber!r}")
