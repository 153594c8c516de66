"""Where an ingest sets its validated event rows aside between reading the export and merging it (one table in
memory at a time, `sendwise.ingest.run.TableRun`): a folder ``.ingest-<random>.tmp`` in the home (the disk
planned for the data; the system's temporary folder where the home does not exist yet).

An ingest holds an exclusive ``flock`` of the folder's ``.lock`` while it uses the folder, and removes the
folder when done. A folder whose lock nobody holds was left by a killed ingest: the next ingest removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sendwise.settings import Settings

PREFIX, SUFFIX, LOCK = ".ingest-", ".tmp", ".lock"
UNLOCKED_SECONDS = 3600
"""How old a folder without a lock file must be to be taken for one a killed ingest left (a younger one may be
an ingest that has just made it)."""


@contextlib.contextmanager
def spill_folder(settings: Settings) -> Iterator[Path]:
    """A folder for this ingest's set-aside rows, removed afterwards; folders killed ingests left removed first."""
    parent = settings.home if settings.home.is_dir() else Path(tempfile.gettempdir())
    remove_stray_folders(parent)
    with tempfile.TemporaryDirectory(prefix=PREFIX, suffix=SUFFIX, dir=parent, ignore_cleanup_errors=True) as name:
        folder = Path(name)
        with (folder / LOCK).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                empty_but_lock(folder)


def empty_but_lock(folder: Path) -> None:
    """Remove what the folder holds but its lock, before the folder itself goes: an ingest killed while removing
    its many files leaves a folder the next ingest knows for a killed one's (its lock held by nobody)."""
    for entry in folder.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def remove_stray_folders(parent: Path) -> None:
    """Remove the spill folders in ``parent`` that no running ingest holds."""
    for folder in parent.glob(f"{PREFIX}*{SUFFIX}"):
        if not folder.is_dir():
            continue
        lock = folder / LOCK
        if not lock.exists():
            with contextlib.suppress(FileNotFoundError):
                if time.time() - folder.stat().st_mtime > UNLOCKED_SECONDS:
                    shutil.rmtree(folder, ignore_errors=True)
            continue
        try:
            with lock.open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder, ignore_errors=True)
        except (BlockingIOError, FileNotFoundError):
            continue
