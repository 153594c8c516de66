"""Merging an event table with the stored one in pieces, so that the memory it takes does not grow with the table.

The rules are those of `sendwise.ingest.merge` (the export's first row of an event id wins over its later ones,
the stored row over the export's; nothing is rewritten where nothing is added; the table is written in time
order, ties by id), kept in two passes over files in a work folder:

1. Deduplication by buckets: the new rows (the export's valid rows as the reading set them aside, then the
   appended parts) and the stored event ids go to buckets by a hash of their event id, so that every copy of an
   id meets in one bucket; each bucket is deduplicated alone, in the rows' order, and its added rows are cut by
   time range.
2. Writing by time ranges: each range's stored rows (read with a filter on `occurred_at`) and added rows are
   sorted and written as row groups of the new table. The ranges are cut from the hours of the rows, so that
   each holds about ``bucket_rows`` rows; the ranges one after the other are the whole table in its order.

Every piece of the final table (in that order) is handed to ``on_piece`` where one is given: what is derived
from the whole table is gathered from its pieces.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.feather as feather
import pyarrow.parquet as pq

from sendwise import contract, keys, raw
from sendwise.contract import Table
from sendwise.ingest.batch import concat
from sendwise.ingest.merge import _raw_frame, _sort_events, raw_arrow
from sendwise.tombstones import CUSTOMER_KEY, Tombstones

HOUR_MICROS = 3_600_000_000
TIME = "occurred_at"
READ_ROWS = 1_000_000
"""Rows of the stored table read at a time where it is only scanned."""


@dataclass
class PieceMerge:
    """What merging an event table in pieces did."""

    staged: Path | None  # the new table, to be committed (None: unchanged)
    duplicates: int  # new rows whose id came before in the export or is stored
    added: int
    forgotten: int  # new rows of erased customers, dropped
    first: pd.Timestamp | None  # the time span of the new rows kept (erased customers' dropped)
    last: pd.Timestamp | None


def write_rows(rows: pd.DataFrame | pa.Table, path: Path) -> None:
    """Rows set aside for a later pass, as an Arrow IPC file (``.arrow``; LZ4): far quicker to write and read
    than Parquet, and the file lives only as long as the ingest."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pandas(rows, preserve_index=False)
    feather.write_feather(table, path, compression="lz4")


def read_rows(path: Path) -> pd.DataFrame:
    """Rows set aside (``write_rows``) or appended (a Parquet part), with the dtypes they had (Arrow strings,
    which Arrow files hold as large strings, stay Arrow strings)."""
    table = feather.read_table(path) if path.suffix == ".arrow" else pq.read_table(path)
    return table.to_pandas(types_mapper={pa.large_string(): contract.STRING}.get)


def parquet_rows(paths: list[Path]) -> int:
    """The rows of Parquet files, from their metadata."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in paths)


def micros(times: pd.Series | pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Time stamps as microseconds since the epoch (UTC)."""
    if isinstance(times, pd.Series):
        return times.dt.as_unit("us").array.asi8 if isinstance(times.dtype, pd.DatetimeTZDtype) else times.to_numpy()
    return pc.cast(pc.cast(times, pa.timestamp("us", "UTC")), pa.int64()).to_numpy(zero_copy_only=False)


def merge_in_pieces(
    table: Table,
    new_files: list[Path],
    new_rows: int,
    stored: Path | None,
    tombstones: Tombstones,
    work: Path,
    bucket_rows: int,
    on_piece: Callable[[pd.DataFrame], None] | None,
    target: Path,
) -> PieceMerge:
    """Merge the rows of ``new_files`` (in order; ``new_rows`` of them) into the stored table ``stored`` (None:
    never ingested) in pieces of about ``bucket_rows`` rows, using ``work`` for the pieces; the new table staged
    beside the stored one, ``target`` (``raw.StagedWriter``), where rows were added."""
    key = table.key
    work.mkdir(parents=True, exist_ok=True)
    stored_rows = pq.ParquetFile(stored).metadata.num_rows if stored is not None else 0
    buckets = max(1, math.ceil((new_rows + stored_rows) / bucket_rows))
    hours: Counter[int] = Counter()
    result = PieceMerge(None, 0, 0, 0, None, None)

    for number, path in enumerate(new_files):
        frame = read_rows(path)
        if path.suffix == ".arrow":  # rows set aside by the reading: in their buckets from now on
            path.unlink()
        if len(tombstones) and not frame.empty:
            hit = tombstones.matches(frame[CUSTOMER_KEY]).to_numpy()
            result.forgotten += int(hit.sum())
            frame = frame.loc[~hit].reset_index(drop=True)
        if frame.empty:
            continue
        frame = _raw_frame(table, frame)
        times = frame[TIME]
        first, last = times.min(), times.max()
        result.first = first if result.first is None else min(result.first, first)
        result.last = last if result.last is None else max(result.last, last)
        _count_hours(hours, micros(times))
        _write_groups(frame, keys.buckets(frame[key], buckets), work, f"b{{group:05d}}-new-{number:06d}.arrow")
    if result.first is None:
        _scan(stored, on_piece)
        return result

    if stored is not None:
        parquet = pq.ParquetFile(stored)
        for number, batch in enumerate(parquet.iter_batches(batch_size=READ_ROWS, columns=[key, TIME])):
            _count_hours(hours, micros(batch.column(TIME)))
            ids = pa.table({key: batch.column(key)})
            name = f"b{{group:05d}}-stored-{number:06d}.arrow"
            _write_groups(ids, keys.buckets(ids.column(key), buckets), work, name)

    cuts = _time_cuts(hours, bucket_rows)
    for bucket in range(buckets):
        new = _read_arrow(sorted(work.glob(f"b{bucket:05d}-new-*.arrow")))
        if new is None or not new.num_rows:
            continue
        ids = new.column(key)
        repeated = keys.repeated(ids)
        stored_files = sorted(work.glob(f"b{bucket:05d}-stored-*.arrow"))
        stored_ids = [feather.read_table(path).column(key) for path in stored_files]
        already = keys.is_in(ids, keys.value_set(stored_ids)) & ~repeated if stored_ids else np.zeros_like(repeated)
        kept = ~(repeated | already)
        added = new if kept.all() else new.filter(pa.array(kept))
        del new, ids
        result.duplicates += int(repeated.sum() + already.sum())
        result.added += added.num_rows
        ranges = np.searchsorted(cuts, micros(added.column(TIME)), side="right")
        _write_groups(added, ranges, work, f"t{{group:05d}}-b{bucket:05d}.arrow")
        for path in work.glob(f"b{bucket:05d}-*.arrow"):
            path.unlink()
    if result.added == 0:
        _scan(stored, on_piece)
        return result

    writer = raw.StagedWriter(target)
    try:
        for piece in range(len(cuts) + 1):
            parts = [_stored_range(stored, cuts, piece)] if stored is not None else []
            parts += [read_rows(path) for path in sorted(work.glob(f"t{piece:05d}-b*.arrow"))]
            frame = concat([part for part in parts if not part.empty])
            if frame.empty:
                continue
            frame = _sort_events(_raw_frame(table, frame), key)
            if on_piece is not None:
                on_piece(frame)
            writer.write(_text_as_strings(raw_arrow(frame)))
            for path in work.glob(f"t{piece:05d}-b*.arrow"):
                path.unlink()
    except BaseException:
        writer.discard()
        raise
    result.staged = writer.close()
    return result


def _count_hours(hours: Counter[int], times: np.ndarray) -> None:
    values, counts = np.unique(times // HOUR_MICROS, return_counts=True)
    hours.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))


def _time_cuts(hours: Counter[int], bucket_rows: int) -> np.ndarray:
    """The times (microseconds) that cut the table into ranges of about ``bucket_rows`` rows, on whole hours."""
    cuts: list[int] = []
    held = 0
    for hour in sorted(hours):
        if held and held + hours[hour] > bucket_rows:
            cuts.append(hour * HOUR_MICROS)
            held = 0
        held += hours[hour]
    return np.asarray(cuts, dtype=np.int64)


def _read_arrow(paths: list[Path]) -> pa.Table | None:
    """Files of set-aside rows (``write_rows``) one after the other, as Arrow (None: no files). A column one
    file holds as Python strings and another as Arrow strings, or one without a value, takes the wider type."""
    tables = [feather.read_table(path) for path in paths]
    if not tables:
        return None
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")


def _write_groups(frame: pd.DataFrame | pa.Table, groups: np.ndarray, folder: Path, name: str) -> None:
    """The rows of each group (in their order) set aside in a file of their own in ``folder``: ``name`` with the
    group for ``{group}``."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    table = table.take(pa.array(order))
    found = np.unique(ordered)
    starts = np.searchsorted(ordered, found, side="left")
    ends = np.searchsorted(ordered, found, side="right")
    for group, start, end in zip(found.tolist(), starts.tolist(), ends.tolist(), strict=True):
        write_rows(table.slice(start, end - start), folder / name.format(group=group))


def _stored_range(stored: Path, cuts: np.ndarray, piece: int) -> pd.DataFrame:
    """The stored rows of the ``piece``-th time range (the file's row groups outside it are not read)."""
    field = ds.field(TIME)
    kind = pa.timestamp("us", "UTC")
    bounds: list[ds.Expression] = []
    if piece > 0:
        bounds.append(field >= pa.scalar(int(cuts[piece - 1]), kind))
    if piece < len(cuts):
        bounds.append(field < pa.scalar(int(cuts[piece]), kind))
    if not bounds:
        return pd.read_parquet(stored)
    condition = bounds[0] if len(bounds) == 1 else bounds[0] & bounds[1]
    return pq.read_table(stored, filters=condition).to_pandas()


def _scan(stored: Path | None, on_piece: Callable[[pd.DataFrame], None] | None) -> None:
    """The stored table handed to ``on_piece`` in pieces, in its order (the table is not rewritten)."""
    if on_piece is None:
        return
    for frame in stored_pieces(stored):
        on_piece(frame)


def stored_pieces(stored: Path | None, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """The stored table in pieces of ``READ_ROWS`` rows, in its order, as ``raw.load_table`` reads it."""
    if stored is None:
        return
    parquet = pq.ParquetFile(stored)
    wanted = None if columns is None else [c for c in parquet.schema_arrow.names if c in columns]
    for batch in parquet.iter_batches(batch_size=READ_ROWS, columns=wanted):
        yield pa.Table.from_batches([batch]).replace_schema_metadata(parquet.schema_arrow.metadata).to_pandas()


def _text_as_strings(table: pa.Table) -> pa.Table:
    """Columns without a value (Arrow's null type) as text, so that every piece has the schema of the whole
    table: the raw store reads such a text column back as missing values all the same."""
    for index, column in enumerate(table.schema):
        if pa.types.is_null(column.type):
            table = table.set_column(index, column.name, table.column(index).cast(pa.string()))
    return table
