"""The raw store: one Parquet file per contract table under ``settings.raw_dir`` (docs/architecture.md).

``sendwise.ingest`` writes it; everything downstream reads through ``load_table``. What a writer keeps to, so
that a writer killed at any moment leaves the store as it was or as it would have been, never a mix:

- It holds ``writer_lock`` (an exclusive ``flock`` of ``raw/.lock``, released by the kernel when the process
  dies) from reading the tables it merges with to its last write: one writer at a time.
- Each file is written whole to a temporary file beside it (``.<name>-<random>.tmp``) and renamed into place.
- Files that change together (an ingest's tables and quarantine, and the appended parts merged into them) are
  committed together (``commit``): every temporary file is written first, then the list of renames and
  removals (``raw/.commit.json``, itself written atomically) is the commit marker, then the renames and
  removals are done and the marker removed. Taking the lock finishes a commit a
  killed writer left marked (``recover``) and removes the temporary files nothing committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sendwise.contract import TABLES
from sendwise.settings import Settings

LOCK_FILE = ".lock"
COMMIT_FILE = ".commit.json"


def table_path(settings: Settings, name: str) -> Path:
    """Where the raw table ``name`` lives."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}: expected one of {', '.join(TABLES)}")
    return settings.raw_dir / f"{name}.parquet"


def load_table(settings: Settings, name: str, columns: Iterable[str] | None = None) -> pd.DataFrame | None:
    """The raw table ``name`` as ingested, or None when it was never ingested; only those of ``columns`` it
    has (in the table's order) where they are given."""
    path = table_path(settings, name)
    if not path.exists():
        return None
    if columns is None:
        return pd.read_parquet(path)
    wanted = set(columns)
    return pd.read_parquet(path, columns=[c for c in pq.read_schema(path).names if c in wanted])


def stage_parquet(frame: pd.DataFrame | pa.Table, path: Path) -> Path:
    """``frame`` written whole to a temporary file beside ``path`` (same file system), to be renamed onto it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".parquet.tmp")
    os.close(handle)
    try:
        if isinstance(frame, pa.Table):
            pq.write_table(frame, temporary)
        else:
            frame.to_parquet(temporary, index=False)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return Path(temporary)


def write_parquet_atomic(frame: pd.DataFrame | pa.Table, path: Path) -> None:
    """Write ``frame`` to ``path`` so that readers see either the old file or the new one, never a part.

    The data goes to a temporary file in the same folder (same file system), which then replaces ``path``.
    """
    os.replace(stage_parquet(frame, path), path)


def write_text_atomic(text: str, path: Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, like ``write_parquet_atomic``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_table(settings: Settings, name: str, frame: pd.DataFrame) -> Path:
    """Replace the raw table ``name`` with ``frame`` atomically."""
    path = table_path(settings, name)
    write_parquet_atomic(frame, path)
    return path


@contextlib.contextmanager
def writer_lock(settings: Settings) -> Iterator[None]:
    """The raw store's one writer at a time, a commit a killed writer left finished first (``recover``)."""
    settings.raw_dir.mkdir(parents=True, exist_ok=True)
    with (settings.raw_dir / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        recover(settings)
        yield


def commit(settings: Settings, staged: Mapping[Path, Path], removed: Iterable[Path] = ()) -> None:
    """Rename every staged file (``stage_parquet``) onto its path and remove the ``removed`` files (appended
    parts merged into the staged tables), all or none: they are recorded first, so that a writer killed among
    them is finished by the next (``recover``). The caller holds ``writer_lock``."""
    steps: list[list[str | None]] = [[str(temporary), str(path)] for path, temporary in staged.items()]
    steps += [[None, str(path)] for path in removed]
    if not steps:
        return
    marker = settings.raw_dir / COMMIT_FILE
    write_text_atomic(json.dumps(steps), marker)
    _finish(marker)


def _finish(marker: Path) -> None:
    for temporary, path in json.loads(marker.read_text(encoding="utf-8")):
        if temporary is None:
            Path(path).unlink(missing_ok=True)
        elif os.path.exists(temporary):  # else renamed before the kill
            os.replace(temporary, path)
    marker.unlink()


def recover(settings: Settings) -> None:
    """Finish the commit a killed writer left marked, and remove temporary files nothing will commit (those of the
    raw store, the quarantine and the ingest reports). The caller holds ``writer_lock``."""
    marker = settings.raw_dir / COMMIT_FILE
    if marker.exists():
        _finish(marker)
    for folder in (settings.raw_dir, settings.quarantine_dir, settings.reports_dir / "ingest"):
        if folder.is_dir():
            for stray in folder.glob(".*.tmp"):
                stray.unlink(missing_ok=True)


class StagedWriter:
    """A raw table written piece by piece (one or more Parquet row groups each) to a temporary file beside its path,
    to be renamed onto it (``commit``) like a file of ``stage_parquet``: its memory is that of a piece, not of the
    table. Every piece takes the first one's schema."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.temporary: Path | None = None
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}-", suffix=".parquet.tmp")
            os.close(handle)
            self.temporary = Path(name)
            self.writer = pq.ParquetWriter(self.temporary, table.schema)
        self.writer.write_table(table.cast(self.writer.schema))

    def close(self) -> Path | None:
        """The temporary file, whole (None where nothing was written)."""
        if self.writer is not None:
            self.writer.close()
        return self.temporary

    def discard(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        if self.temporary is not None:
            self.temporary.unlink(missing_ok=True)
