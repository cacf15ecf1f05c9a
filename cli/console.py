"""The consoles and progress bars of every command, in one place.

- :func:`stdout_console`: tables and results. Redirected to a file or a CI log, rich would assume 80
  columns and fold the tables: there it gets :data:`LOG_WIDTH` columns instead.
- :func:`stderr_console`: progress and messages, printed as given (no markup guessing, no folding).
- :class:`ProgressBars`: rich progress bars on stderr, one per stage, each made by its stage's first
  update, so a bar appears only once a command's checks have passed and an input error stays one line.

rich is imported inside the functions: ``medsaga --help`` stays instant.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

# Columns of a table written to a file or a CI log (a terminal gives its own width).
LOG_WIDTH = 160


def stdout_console(*, highlight: bool = True) -> Console:
    """The console for a command's results: the terminal's width, or :data:`LOG_WIDTH` columns."""
    from rich.console import Console

    return Console(highlight=highlight) if sys.stdout.isatty() else Console(highlight=highlight, width=LOG_WIDTH)


def stderr_console() -> Console:
    """The console for progress and messages (stderr; no highlighting, long lines not folded)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


class ProgressBars:
    """Progress bars on stderr, one per stage (``"volumes"``, ``"checking"``...), in the order the
    stages first report.

    Each bar is ``DESCRIPTION [bar] DONE/TOTAL [DETAIL] ELAPSED [REMAINING]``. Nothing is shown
    before the first :meth:`update`. Where stderr is no terminal (a log file) no bar is drawn:
    there it would only leave blank lines. Use it as a context manager, or call :meth:`close`.

    Args:
        console: where the bars go (default: :func:`stderr_console`). Print other lines on
            :attr:`console` while the bars show: rich keeps the bars below them.
        transient: the bars vanish when closed (the command's table or its one error line follows).
        remaining: add the estimated time remaining.
        byte_counts: count bytes (``1.2/3.4 GB``) instead of items.
        detail: a template of further text after the count, filled from :meth:`update`'s fields
            (``"loss {task.fields[loss]}"``).
    """

    def __init__(self, console: Console | None = None, *, transient: bool = True, remaining: bool = False,
                 byte_counts: bool = False, detail: str | None = None) -> None:
        self.console = console if console is not None else stderr_console()
        self.transient = transient
        self.remaining = remaining
        self.byte_counts = byte_counts
        self.detail = detail
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def shown(self) -> bool:
        """Whether bars are drawn (stderr is a terminal)."""
        return self.console.is_terminal

    def update(self, stage: str, done: float | None, total: float | None, description: str | None = None, *,
               restart: bool = False, **fields: Any) -> None:
        """Set ``stage``'s bar to ``done`` of ``total``; ``description`` (default: the stage's name)
        is shown before the bar; ``fields`` fill :attr:`detail`. ``None`` leaves a count as it was
        (a new bar: nothing done, total not known yet). ``restart``: a new round of the stage (its
        count and clock from zero)."""
        progress = self._started()
        if stage not in self.tasks:
            self.tasks[stage] = progress.add_task(description or stage, total=total, completed=done or 0, **fields)
        elif restart:
            progress.reset(self.tasks[stage], total=total, completed=done or 0, description=description or stage,
                           **fields)
        else:
            progress.update(self.tasks[stage], total=total, completed=done, **fields,
                            **({"description": description} if description is not None else {}))

    def advance(self, stage: str, amount: float = 1) -> None:
        """Move ``stage``'s bar (made by an earlier :meth:`update`) ``amount`` forward."""
        self._started().advance(self.tasks[stage], amount)

    def total(self, stage: str) -> float | None:
        """``stage``'s total as last set (``None`` before its first update)."""
        if self.progress is None or stage not in self.tasks:
            return None
        return self.progress.tasks[self.tasks[stage]].total

    def close(self) -> None:
        """Stop the bars (a transient bar vanishes; a lasting one stays as it is)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.tasks = {}

    def _started(self) -> Progress:
        if self.progress is None:
            from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            columns: list[Any] = [TextColumn("{task.description}"), BarColumn(),
                                  DownloadColumn() if self.byte_counts else MofNCompleteColumn()]
            if self.detail is not None:
                columns.append(TextColumn(self.detail))
            columns.append(TimeElapsedColumn())
            if self.remaining:
                columns.append(TimeRemainingColumn())
            self.progress = Progress(*columns, console=self.console, transient=self.transient,
                                     disable=not self.shown)
            self.progress.start()
        return self.progress
