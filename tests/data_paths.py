"""Where the tests find data: the repository, its sample data, and the real data beside the clone.

The real data (``../shared/data``: CT DICOM series and DICOM-SEG, MALF brain MR, ...) is not in
the repository; CI provides it beside the clone. A test that needs it skips, with the reason,
where it is absent: the whole test with :data:`needs_shared_data`, or one folder with
:func:`need_shared`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
SHARED_DATA = ROOT.parent / "shared" / "data"

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared test data not found at {SHARED_DATA}")


def need_shared(*parts: str | Path) -> Path:
    """``SHARED_DATA / parts`` (or a path under it, whole); the calling test skips where it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (CI provides ../shared beside the clone)")
    return path
