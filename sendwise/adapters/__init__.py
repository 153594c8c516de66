"""Adapters: public datasets rewritten in the data contract, so that real data runs through the real pipeline.

Each adapter reads a source as it is published and writes data-contract tables into a directory that
`sendwise ingest DIR` accepts. Whatever the source does not say (time zone, signup time, consent, the time of
an event inside a label window, what a conversion is worth) is an assumption, and each adapter's module
docstring lists every one it makes (docs/real-data.md collects them).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sendwise.raw import write_parquet_atomic


def write_tables(tables: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, int]:
    """Write each table as `TABLE.parquet` into `out_dir`; the row counts written, by table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        write_parquet_atomic(frame, out_dir / f"{name}.parquet")
    return {name: len(frame) for name, frame in tables.items()}


def utc_times(values: pd.Series | pd.DatetimeIndex) -> pd.Series:
    """Timestamps as `datetime64[us, UTC]` (the contract accepts Parquet timestamps with a zone)."""
    return pd.Series(pd.to_datetime(values, utc=True)).dt.as_unit("us").reset_index(drop=True)
