"""Path identity: is this output the same file as that input?"""

from __future__ import annotations

import os
from pathlib import Path


def same_path(a: Path, b: Path) -> bool:
    """Same file or folder: by identity when both exist (catches links and hard links), otherwise by
    resolved path (an output that does not exist yet)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.expanduser().resolve() == b.expanduser().resolve()
