"""Checking and coercing method options: one helper for every method's ``__post_init__``.

A method's options (a frozen dataclass, :class:`~medsaga.methods.base.MethodOptions`) get their
values from Python callers, from ``-o KEY=VALUE`` on the command line (:mod:`medsaga.methods.option_text`:
bools, ints, floats, text, tuples) and from a saved run's ``config.json`` (lists for tuples). Each
options class states what every field must be, once::

    def __post_init__(self) -> None:
        check_fields(self, rank=integer(at_least=1), scale=real(above=0), svd=one_of(SVD_METHODS),
                     layerwise=boolean(), targets=names(LINEAR_ROLES))

and :func:`check_fields` checks each value and stores it in one canonical form (a tuple for a list
or a single name, ``float`` for an int given where a number is meant), so options compare equal
after a reload. The rules are the same for every method:

* an integer is never a bool (``rank=True`` is refused, not read as 1) and never a float;
* a number is finite (NaN passes every bare ``<`` comparison, and a NaN factor trains every weight
  to NaN without an error) and never a bool;
* a list of names is one name or several, non-empty, without repeats, each among the allowed
  ones (the encoder's :data:`~medsaga.model.backbone.LINEAR_ROLES`, say).

A refused value raises :class:`ValueError` naming the field and the value (``rank must be an
integer of at least 1, got True``); :func:`~medsaga.methods.registry.create_method` turns it into
an :class:`~medsaga.errors.InputError`. The commands' own options are checked alike by
:mod:`medsaga.option_checks`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from numbers import Integral
from typing import Any

from medsaga.option_checks import is_real_within, range_text

Check = Callable[[str, Any], Any]
"""``check(field name, value) -> the value in canonical form``; raises ``ValueError`` if refused."""


def check_fields(options: Any, **checks: Check) -> None:
    """Check the named fields of a frozen dataclass ``options`` and store their canonical values.

    Raises:
        ValueError: a value is refused (the message names the field and the value).
        TypeError: a name that is not a field of ``options`` (a mistake in the options class).
    """
    known = {field.name for field in fields(options)}
    for name, check in checks.items():
        if name not in known:
            raise TypeError(f"{type(options).__name__} has no field {name!r}")
        object.__setattr__(options, name, check(name, getattr(options, name)))


def integer(*, at_least: int | None = None, at_most: int | None = None) -> Check:
    """An integer (not a bool, not a float) within ``[at_least, at_most]``; stored as ``int``."""

    def check(name: str, value: Any) -> int:
        valid = isinstance(value, Integral) and not isinstance(value, bool)
        if not valid or (at_least is not None and value < at_least) or (at_most is not None and value > at_most):
            raise ValueError(f"{name} must be an integer{range_text(None, at_least, None, at_most)}, got {value!r}")
        return int(value)

    return check


def real(*, above: float | None = None, at_least: float | None = None, below: float | None = None,
         at_most: float | None = None) -> Check:
    """A finite number (not a bool, not NaN or infinite) within the bounds; stored as ``float``.

    ``above``/``below`` are exclusive bounds, ``at_least``/``at_most`` inclusive ones.
    """

    def check(name: str, value: Any) -> float:
        if not is_real_within(value, above, at_least, below, at_most):
            raise ValueError(f"{name} must be a finite number{range_text(above, at_least, below, at_most)}, "
                             f"got {value!r}")
        return float(value)

    return check


def boolean() -> Check:
    """``True`` or ``False`` (not 0/1, not text)."""

    def check(name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value

    return check


def one_of(choices: Iterable[str]) -> Check:
    """One of ``choices``."""
    allowed = tuple(choices)

    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        return value

    return check


def names(allowed: Sequence[str] | None = None, *, canonical_order: bool = False) -> Check:
    """One name or a list of them: non-empty, no repeats, each among ``allowed`` (``None``: any
    non-empty text, e.g. name patterns); stored as a tuple, in the order given or, with
    ``canonical_order``, in the order of ``allowed``."""
    among = f" among {', '.join(allowed)}" if allowed is not None else ""

    def check(name: str, value: Any) -> tuple[str, ...]:
        # A single name is a one-element list (``-o targets=v`` on the command line).
        items: tuple[Any, ...] = ((value,) if isinstance(value, str)
                                  else tuple(value) if isinstance(value, (list, tuple)) else ())
        valid = bool(items) and all(isinstance(item, str) and item for item in items)
        valid = valid and len(set(items)) == len(items) and (allowed is None or set(items) <= set(allowed))
        if not valid:
            raise ValueError(f"{name} must be one or more distinct names{among}; got {value!r}")
        if canonical_order and allowed is not None:
            return tuple(item for item in allowed if item in items)
        return items

    return check


def indexes() -> Check:
    """One non-negative integer or a list of them, without repeats; stored as a sorted tuple."""

    def check(name: str, value: Any) -> tuple[int, ...]:
        items: tuple[Any, ...] = ((value,) if isinstance(value, Integral)
                                  else tuple(value) if isinstance(value, (list, tuple)) else ())
        valid = bool(items) and all(isinstance(i, Integral) and not isinstance(i, bool) and int(i) >= 0 for i in items)
        if not valid or len(set(items)) != len(items):
            raise ValueError(f"{name} must be one or more distinct non-negative integers; got {value!r}")
        return tuple(sorted(int(i) for i in items))

    return check


def optional(check: Check) -> Check:
    """``None``, or what ``check`` accepts."""

    def check_optional(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return check_optional
