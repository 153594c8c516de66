"""The raw event tables split by customer, so that the feature build holds one share of the customers' events
at a time rather than every event of every customer.

A customer's share is a stable hash of their id: every event of a customer, in every table, is in the same
share, in the order the raw table has it. With one share (a store small enough for one pass, the usual case)
the raw tables are read as they are; with more, one streaming pass over each raw table writes each share's
rows to its own Parquet file in a temporary folder under the home, removed when the build ends.

While it reads, the pass also learns what the build needs of all the events before any share is built: the
earliest event the features use (days are counted from it) and the categories viewed.
"""

from __future__ import annotations

import contextlib
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.progress import Progress

from features.latest import VIEW_EVENTS
from sendwise import keys
from sendwise.raw import load_table, table_path
from sendwise.settings import Settings


@dataclass
class Usable:
    """Which events the features may use: those of customers who allow profiling (`profiled`, their ids),
    before `before`. The same rule on pandas frames (`rows`) and on Arrow tables (`arrow_rows`)."""

    profiled: pa.Array
    before: pd.Timestamp
    _ids: pd.Index = field(init=False)

    def __post_init__(self) -> None:
        self._ids = pd.Index(self.profiled.to_pandas())

    def rows(self, frame: pd.DataFrame) -> pd.Series:
        return frame["customer_id"].isin(self._ids) & (frame["occurred_at"] < self.before)

    def kept(self, frame: pd.DataFrame | None) -> pd.DataFrame | None:
        """The rows of `frame` the features may use (None: no table)."""
        return None if frame is None else frame[self.rows(frame)]

    def arrow_rows(self, table: pa.Table) -> pa.ChunkedArray:
        ids, times = table["customer_id"], table["occurred_at"]
        profiled = pc.is_in(ids, value_set=self.profiled.cast(ids.type))
        return pc.and_(profiled, pc.less(times, pa.scalar(self.before.to_pydatetime(), type=times.type)))


def _view_columns(table: str) -> tuple[str, ...]:
    return ("event", "category") if table == "site_events" else ()


def share_count(customers: int, per_share: int) -> int:
    """How many shares `customers` make at most `per_share` each (at least one)."""
    return max(1, -(-customers // per_share))


@dataclass
class EventShares:
    """The event tables by share of the customers (`read`), with the earliest usable event and the categories
    viewed, found in the same pass."""

    settings: Settings
    columns: dict[str, tuple[str, ...]]
    count: int
    folder: Path | None = None
    earliest: pd.Timestamp | None = None
    categories: set[str] = field(default_factory=set)
    _cache: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    _kept: dict[str, Any] = field(default_factory=dict)

    def read(self, table: str, share: int) -> pd.DataFrame | None:
        """The rows of `table` whose customers are in `share` (None: the store has no such table)."""
        if self.folder is None:
            if table not in self._cache:
                self._cache[table] = load_table(self.settings, table, self.columns[table])
            return self._cache[table]
        path = self.folder / table / f"{share:04d}.parquet"
        if not path.exists():
            return None
        return pd.read_parquet(path)

    def keep(self, name: str, value: object) -> None:
        """Set `value` aside until `take`: on disk when the tables were split (one share's worth in memory)."""
        if self.folder is None:
            self._kept[name] = value
            return
        with (self.folder / f"{name}.pickle").open("wb") as out:
            pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)

    def take(self, name: str) -> Any:
        """What `keep` set aside under `name`, handed back once."""
        if self.folder is None:
            return self._kept.pop(name)
        path = self.folder / f"{name}.pickle"
        with path.open("rb") as source:
            value = pickle.load(source)
        path.unlink()
        return value

    def forget(self, table: str) -> None:
        """Let go of a table read whole (one share), once nothing will read it again."""
        self._cache.pop(table, None)


def _note(shares: EventShares, table: pa.Table, usable: pa.ChunkedArray | pa.Array, name: str) -> None:
    """The earliest usable event and the categories usably viewed among `table`'s rows."""
    first = pc.min(pc.filter(table["occurred_at"], usable)).as_py()
    if first is not None:
        first = pd.Timestamp(first)
        shares.earliest = first if shares.earliest is None else min(shares.earliest, first)
    if name == "site_events":
        views = pc.and_(
            usable, pc.and_(pc.is_in(table["event"], pa.array(VIEW_EVENTS)), pc.is_valid(table["category"]))
        )
        shares.categories |= {str(c) for c in pc.unique(pc.filter(table["category"], views)).to_pylist()}


@contextlib.contextmanager
def event_shares(
    settings: Settings,
    columns: dict[str, tuple[str, ...]],
    shares: int,
    usable: Usable,
    keep_all: Iterable[str] = (),
    progress: bool = True,
) -> Iterator[EventShares]:
    """The event tables (`columns`: the columns to read of each) split into `shares`; the rows `usable` does not
    keep are left out, but for the tables in `keep_all`, kept whole (the email state needs every customer's)."""
    found = EventShares(settings, columns, shares)
    if shares == 1:
        for table in columns:
            frame = found.read(table, 0)
            if frame is not None:
                noted = pa.Table.from_pandas(frame[["customer_id", "occurred_at", *_view_columns(table)]])
                _note(found, noted, usable.arrow_rows(noted), table)
        yield found
        return
    settings.home.mkdir(parents=True, exist_ok=True)
    found.folder = Path(tempfile.mkdtemp(prefix=".feature-shares-", dir=settings.home))
    try:
        with Progress(disable=not progress, transient=True) as bar:
            for table, wanted in columns.items():
                _split(found, table, wanted, usable, table in set(keep_all), bar)
        yield found
    finally:
        shutil.rmtree(found.folder, ignore_errors=True)


def _split(
    found: EventShares, table: str, wanted: tuple[str, ...], usable: Usable, keep_all: bool, bar: Progress
) -> None:
    path = table_path(found.settings, table)
    if not path.exists():
        return
    assert found.folder is not None
    file = pq.ParquetFile(path)
    names = [c for c in file.schema_arrow.names if c in set(wanted)]
    folder = found.folder / table
    folder.mkdir()
    writers: dict[int, pq.ParquetWriter] = {}
    task = bar.add_task(f"splitting {table} by customer", total=file.metadata.num_rows)
    try:
        for batch in file.iter_batches(batch_size=found.settings.ingest_chunk_rows, columns=names):
            chunk = pa.Table.from_batches([batch])
            mask = usable.arrow_rows(chunk)
            _note(found, chunk, mask, table)
            if not keep_all:
                chunk = chunk.filter(mask)
            share = keys.buckets(chunk["customer_id"], found.count)
            order = np.argsort(share, kind="stable")
            bounds = np.concatenate([[0], np.cumsum(np.bincount(share, minlength=found.count))])
            chunk = chunk.take(pa.array(order))
            for s in range(found.count):
                if bounds[s] == bounds[s + 1]:
                    continue
                if s not in writers:
                    writers[s] = pq.ParquetWriter(folder / f"{s:04d}.parquet", chunk.schema)
                writers[s].write_table(chunk.slice(bounds[s], bounds[s + 1] - bounds[s]))
            bar.advance(task, batch.num_rows)
    finally:
        for writer in writers.values():
            writer.close()
    for s in range(found.count):  # a share without rows of this table still reads as an empty table
        if s not in writers:
            pq.write_table(file.schema_arrow.empty_table().select(names), folder / f"{s:04d}.parquet")
