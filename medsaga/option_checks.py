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
    valid = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if valid:
        valid = ((above is None or value > above) and (at_least is None or value >= at_least)
                 and (below is None or value < below) and (at_most is None or value <= at_most))
    if not valid:
        raise InputError(f"{option} must be a finite number{_range_text(above, at_least, below, at_most)}, "
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
        raise InputError(f"{option} must be an integer{_range_text(None, at_least, None, at_most)}, got {value!r}")
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


def _range_text(above: float | None, at_least: float | None, below: float | None, at_most: float | None) -> str:
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
