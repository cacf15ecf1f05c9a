"""Range checks for numeric options, shared by every command.

Each check raises :class:`~medsaga.errors.InputError` with one line that names the option and the
value (``--lr must be a finite number above 0, got nan``), so a new option is checked with one
call instead of one more hand-written ``if``. Floats are refused when NaN or infinite: a NaN
learning rate trains every weight to NaN without any error, and ``nan < 0`` is False, so a bare
comparison lets it through.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from medsaga.errors import InputError


def check_real(option: str, value: float, *, above: float | None = None, at_least: float | None = None,
               below: float | None = None, at_most: float | None = None) -> float:
    """``value`` if it is a finite real number within the given bounds; else an :class:`InputError`.

    ``above``/``below`` are exclusive bounds, ``at_least``/``at_most`` inclusive ones.
    """
    if not is_real_within(value, above, at_least, below, at_most):
        raise InputError(f"{option} must be a finite number{range_text(above, at_least, below, at_most)}, "
                         f"got {value!r}")
    return float(value)


def check_int(option: str, value: int, *, at_least: int | None = None, at_most: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) within ``[at_least, at_most]``; else an :class:`InputError`."""
    valid = isinstance(value, Integral) and not isinstance(value, bool)
    if valid:
        valid = (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
    if not valid:
        if at_least is not None and at_most is None:
            raise InputError(f"{option} must be at least {at_least}, got {value!r}")
        raise InputError(f"{option} must be an integer{range_text(None, at_least, None, at_most)}, got {value!r}")
    return int(value)


def check_positive(option: str, value: float) -> float:
    """A finite number above 0 (learning rates, sizes in physical units)."""
    return check_real(option, value, above=0)


def check_non_negative(option: str, value: float) -> float:
    """A finite number of at least 0 (weight decay, ratios)."""
    return check_real(option, value, at_least=0)


def check_fraction(option: str, value: float) -> float:
    """A finite number in ``[0, 1)`` (a share of the steps, say)."""
    return check_real(option, value, at_least=0, below=1)


def is_real_within(value: object, above: float | None, at_least: float | None, below: float | None,
                   at_most: float | None) -> bool:
    """A finite real number (not a bool) within the bounds: ``above``/``below`` exclusive,
    ``at_least``/``at_most`` inclusive (``None``: no bound)."""
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return ((above is None or value > above) and (at_least is None or value >= at_least)
            and (below is None or value < below) and (at_most is None or value <= at_most))


def range_text(above: float | None, at_least: float | None, below: float | None, at_most: float | None) -> str:
    """`` in [0, 1)``, `` above 0``, `` of at least 0``: the bounds as the error line states them."""
    low = f"({above:g}" if above is not None else f"[{at_least:g}" if at_least is not None else None
    high = f"{below:g})" if below is not None else f"{at_most:g}]" if at_most is not None else None
    if low is not None and high is not None:
        return f" in {low}, {high}"
    if above is not None:
        return f" above {above:g}"
    if at_least is not None:
        return f" of at least {at_least:g}"
    if below is not None:
        return f" below {below:g}"
    if at_most is not None:
        return f" of at most {at_most:g}"
    return ""


MEMORY_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
                "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_memory(text: str) -> int:
    """``12GiB`` → 12 × 2³⁰ bytes; ``8GB`` → 8 × 10⁹ (SI, as the units say); bare numbers are bytes.

    Raises:
        ValueError: not a size.
    """
    stripped = text.strip().replace(" ", "").lower()
    number = stripped.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = stripped[len(number):]
    if unit not in MEMORY_UNITS:
        raise ValueError(f"unknown unit {unit!r} in {text!r} (use GiB, GB, MiB...)")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (e.g. 12GiB)") from None
    if value <= 0:
        raise ValueError(f"memory must be positive, got {text!r}")
    return int(value * MEMORY_UNITS[unit])


def check_memory_size(option: str, text: str | None) -> int | None:
    """A memory size option (``--gpu-memory 12GiB``) in bytes (:func:`parse_memory`); ``None`` when
    not given; an :class:`InputError` naming the option when it is not a size."""
    if text is None:
        return None
    try:
        return parse_memory(text)
    except ValueError as error:
        raise InputError(f"{option}: {error}") from None
