"""``medsaga finetune --cases``: case ids given inline, or read from a selection's files.

``--cases`` takes comma-separated ids (``MALF_1000,MALF_1003``), or the path of a file:
``selection.json`` written by ``medsaga select`` (its ``cases``, in pick order), or a text file
of ids separated by commas, spaces or new lines (``cases.txt``). A file's provenance (path,
SHA-256 and, for a selection, its rule and folder) goes into the run's config.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from medsaga.errors import InputError


def parse_cases(text: str | None) -> tuple[tuple[str, ...], dict[str, Any] | None]:
    """``--cases``'s value → the case ids and, when they came from a file, where from."""
    if not text:
        return (), None
    path = Path(text).expanduser()
    if path.is_file():
        return read_case_file(path)
    if path.suffix.lower() in (".json", ".txt") or "/" in text:
        raise InputError("no such file (--cases takes case ids or a selection.json / cases.txt file)", path)
    return tuple(c.strip() for c in text.split(",") if c.strip()), None


def read_case_file(path: Path) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The case ids in ``path`` (module docstring) and its provenance."""
    data = path.read_bytes()
    provenance: dict[str, Any] = {"file": str(path.resolve()), "sha256": hashlib.sha256(data).hexdigest()}
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(data.decode("utf-8"))
            cases = tuple(str(case) for case in document["cases"])
        except (ValueError, KeyError, TypeError):
            raise InputError("is not a medsaga selection (expected JSON with a 'cases' list)", path) from None
        provenance.update({key: document.get(key) for key in ("rule", "folder", "scans", "created")})
    else:
        try:
            cases = tuple(case for case in re.split(r"[,\s]+", data.decode("utf-8")) if case)
        except UnicodeDecodeError:
            raise InputError("is not a text file of case ids", path) from None
    if not cases:
        raise InputError("names no cases", path)
    return cases, provenance
