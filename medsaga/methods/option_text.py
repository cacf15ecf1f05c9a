"""Method option values written on a command line (``-o rank=8``, ``galore:layerwise=true``).

Both ``medsaga finetune -o KEY=VALUE`` and ``medsaga benchmark --methods`` read values the same
way; only the list separator differs, because commas already separate benchmark entries.
"""

from __future__ import annotations

from typing import Any


def parse_option_value(text: str, list_separator: str) -> Any:
    """``true``/``false`` → bool, then int, then float; ``a<sep>b`` → ``("a", "b")``; else the text.

    Lists come back as tuples (hashable, so benchmark variants can be compared and de-duplicated);
    the methods' option dataclasses take tuples or lists alike.
    """
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if list_separator in text:
        return tuple(part.strip() for part in text.split(list_separator) if part.strip())
    return text


def format_option_value(value: Any, list_separator: str) -> str:
    """The inverse of :func:`parse_option_value`: ``True`` → ``true``, lists joined by the separator."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return list_separator.join(map(str, value))
    return str(value)
