"""nnU-Net v2 (``nnunetv2`` from PyPI), 2d configuration, as the benchmark's fourth contender.

Installed only by the ``benchmark`` extra (``pip install -e .[benchmark]``), never imported by
medsaga or its CLI. The runner is not written yet: :func:`unavailable` says why it cannot run,
and the benchmark skips it (no record) until it can.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def unavailable() -> str | None:
    """Why this contender cannot run here (``None``: it can)."""
    if importlib.util.find_spec("nnunetv2") is None:
        return "nnunetv2 is not installed (pip install -e .[benchmark])"
    return "the nnU-Net runner (dataset conversion, custom splits, budgeted trainer) is not written yet"


def run(*args: Any, **kwargs: Any) -> Any:
    raise SystemExit(unavailable() or "nnU-Net runner not written")
