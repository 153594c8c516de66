"""The raw store: one Parquet file per contract table under ``settings.raw_dir`` (docs/architecture.md).

``sendwise.ingest`` is the only writer; everything downstream reads through ``load_table``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pandas as pd

from sendwise.contract import TABLES
from sendwise.settings import Settings


def table_path(settings: Settings, name: str) -> Path:
    """Where the raw table ``name`` lives."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}: expected one of {', '.join(TABLES)}")
    return settings.raw_dir / f"{name}.parquet"


def load_table(settings: Settings, name: str) -> pd.DataFrame | None:
    """The raw table ``name`` as ingested, or None when it was never ingested."""
    path = table_path(settings, name)
    if not path.exists():
        return None
    return pd.read_parquet(path)


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` so that readers see either the old file or the new one, never a part.

    The data goes to a temporary file in the same folder (same file system), which then replaces ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".parquet.tmp")
    os.close(handle)
    try:
        frame.to_parquet(temporary, index=False)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


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
