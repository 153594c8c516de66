"""Progress bars of an ingest: one per table (each file read and checked, the merge, the write)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class ProgressBars:
    """One rich progress bar per table (read and check each file, merge, write)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def add(self, table: str, steps: int) -> None:
        if self.progress is not None:
            self.tasks[table] = self.progress.add_task(table, total=steps)

    def advance(self, table: str) -> None:
        if self.progress is not None and table in self.tasks:
            self.progress.advance(self.tasks[table])


@contextmanager
def progress_bars(enabled: bool) -> Iterator[ProgressBars]:
    """Progress bars on stderr while the ingest runs (none when ``enabled`` is false)."""
    if not enabled:
        yield ProgressBars(None)
        return
    progress = Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    with progress:
        yield ProgressBars(progress)
