"""User-facing errors.

Anything wrong with what the user handed us (a file, a folder, an option) is raised as
:class:`InputError`. The CLI turns it into one line on stderr and exit code 2, with no traceback;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: names the offending file (when there is one) and what is wrong with it."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)
