"""Merging an export with what the raw store and the quarantine already hold (rules in `sendwise.ingest`).

Events are deduplicated by `event_id`, the stored row winning; customers, campaigns and offers are replaced
by the later row. The counts of what was added, updated or changed nothing feed the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sendwise import contract
from sendwise.contract import Kind, Table
from sendwise.ingest.batch import Batch, concat, unify_attributes
from sendwise.ingest.parse import TIMESTAMP
from sendwise.keys import repeated
from sendwise.settings import Settings


@dataclass
class Merged:
    """A raw table after the merge, and what the export changed in it."""

    frame: pd.DataFrame
    duplicates: int
    added: int
    updated: int
    export_keys: pd.Index  # the keys of the winning rows of this export (entity tables)


def _raw_frame(table: Table, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with exactly the raw store's columns, in order, and its dtypes."""
    columns = list(contract.RAW_COLUMNS[table.name])
    if table.attributes:
        columns += sorted(c for c in frame.columns if c.startswith(contract.ATTRIBUTE_PREFIX))
    frame = frame.reindex(columns=columns)
    for column in table.columns:
        if column.kind == Kind.TIMESTAMP:
            frame[column.name] = frame[column.name].astype(TIMESTAMP)
        elif column.kind in (Kind.FLOAT, Kind.INT):
            frame[column.name] = frame[column.name].astype(float)
        elif column.kind == Kind.BOOL:
            frame[column.name] = frame[column.name].astype("boolean" if not column.required else bool)
    if table.name == "customers":
        frame["consent_profiling"] = frame["consent_profiling"].astype(bool)
        frame["timezone_inferred"] = frame["timezone_inferred"].astype(bool)
    return frame


def merge(batch: Batch, stored: pd.DataFrame | None) -> Merged:
    """The raw table ``batch.table`` with the batch merged into ``stored`` (None: never ingested)."""
    table = batch.table
    new = _raw_frame(table, batch.valid)
    if stored is not None and not set(contract.RAW_COLUMNS[table.name]) <= set(stored.columns):
        stored = _raw_frame(table, stored)  # stored before the contract had some of its columns: they are missing
    merged = (_merge_events if table.is_event else _merge_entities)(table, new, stored)
    if table.attributes:
        merged.frame = _raw_frame(table, unify_attributes(merged.frame))
    return merged


def _merge_events(table: Table, new: pd.DataFrame, stored: pd.DataFrame | None) -> Merged:
    key = table.key
    again = repeated(new[key])
    if again.any():
        new = new.loc[~again]
    already = new[key].isin(stored[key]).to_numpy() if stored is not None else np.zeros(len(new), dtype=bool)
    added = new.loc[~already] if already.any() else new
    duplicates = int(again.sum() + already.sum())
    if stored is not None and added.empty:
        return Merged(stored, duplicates, 0, 0, pd.Index([]))
    frame = concat([stored, added]) if stored is not None else added
    return Merged(_sort_events(frame, key), duplicates, len(added), 0, pd.Index([]))


def _sort_events(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Events in time order, ties by id: the same rows always give the same file."""
    ids = frame[key]
    keys = pa.table(
        {
            "time": pa.array(frame["occurred_at"].array.asi8),
            "id": pa.array(ids.array)
            if _is_arrow_text(ids)
            else pa.array(ids.to_numpy(dtype=object), type=pa.string()),
        }
    )
    order = pc.sort_indices(keys, sort_keys=[("time", "ascending"), ("id", "ascending")])
    return frame.take(order.to_numpy()).reset_index(drop=True)


def _is_arrow_text(values: pd.Series) -> bool:
    return isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow"


def raw_arrow(frame: pd.DataFrame) -> pa.Table:
    """``frame`` as the raw store writes it: its Arrow-string columns (``validate.FileChecker.kept``) as the
    text columns of Python strings are written, so that ``raw.load_table`` reads the table back the same,
    whichever way its text was held."""
    texts = [name for name in frame.columns if _is_arrow_text(frame[name])]
    empty = [name for name in texts if frame[name].isna().all()]  # no strings: written as a column of None is
    if empty:
        frame = frame.assign(**{name: frame[name].astype(object) for name in empty})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = json.loads(table.schema.metadata[b"pandas"])
    for column in metadata["columns"]:
        if column["name"] in texts and column["name"] not in empty:
            column.update(pandas_type="unicode", numpy_type="object")
    for name in texts:
        if name not in empty:
            index = table.schema.get_field_index(name)
            table = table.set_column(index, name, table.column(index).cast(pa.string()))
    return table.replace_schema_metadata({**table.schema.metadata, b"pandas": json.dumps(metadata).encode()})


def _merge_entities(table: Table, new: pd.DataFrame, stored: pd.DataFrame | None) -> Merged:
    """The later row wins: later in the export, and the export is later than the store."""
    key = table.key
    if table.name == "customers":
        combined = concat([stored, new]) if stored is not None else new
        combined["_order"] = np.arange(len(combined))
        combined = combined.sort_values(["updated_at", "_order"], na_position="first", kind="stable")
        winners = combined.drop_duplicates(key, keep="last").drop(columns="_order")
        stored_count = 0 if stored is None else len(stored)
        from_export = winners.index.to_numpy() >= stored_count
    else:
        latest = new.drop_duplicates(key, keep="last")
        kept = stored.loc[~stored[key].isin(latest[key])] if stored is not None else latest.iloc[:0]
        winners = concat([kept, latest])
        from_export = np.arange(len(winners)) >= len(kept)
    export_keys = pd.Index(winners.loc[from_export, key])
    frame = winners.sort_values(key, kind="stable", ignore_index=True)
    added = int((~export_keys.isin(stored[key])).sum()) if stored is not None else len(export_keys)
    return Merged(frame, len(new) - len(export_keys), added, len(export_keys) - added, export_keys)


def count_unchanged(merged: Merged, key: str, stored: pd.DataFrame | None) -> None:
    """Winning rows of the export identical to the stored ones changed nothing: count them as duplicates."""
    if stored is None or merged.updated == 0:
        return
    keys = merged.export_keys[merged.export_keys.isin(stored[key])]
    after = merged.frame.set_index(key).loc[keys]
    before = stored.set_index(key).loc[keys]
    same = _rows_equal(after, before)
    unchanged = int(same.sum())
    merged.duplicates += unchanged
    merged.updated -= unchanged


def _rows_equal(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    same = np.ones(len(a), dtype=bool)
    for name in a.columns.union(b.columns):
        if name not in a.columns or name not in b.columns:
            present = a[name] if name in a.columns else b[name]
            same &= present.isna().to_numpy()
            continue
        x, y = a[name], b[name]
        both_missing = x.isna().to_numpy() & y.isna().to_numpy()
        equal = x.to_numpy(dtype=object) == y.to_numpy(dtype=object)
        same &= both_missing | np.asarray(equal, dtype=bool)
    return same


def frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Same columns and the same values (missing equal to missing): writing ``a`` would change nothing."""
    if a.shape != b.shape or list(a.columns) != list(b.columns):
        return False
    return bool(_rows_equal(a.reset_index(drop=True), b.reset_index(drop=True)).all())


def quarantine_path(settings: Settings, table: str) -> Path:
    return settings.quarantine_dir / f"{table}.parquet"


def quarantine_update(settings: Settings, table: str, bad: pd.DataFrame, ingested_at: datetime) -> pd.DataFrame | None:
    """The table's quarantine with the bad rows appended (a row already there, same values and reason, stays
    once), or None where it would not change."""
    if bad.empty:
        return None
    path = quarantine_path(settings, table)
    bad = bad.assign(_ingested_at=pd.Timestamp(ingested_at).as_unit("us"))
    stored = pd.read_parquet(path) if path.exists() else None
    combined = concat([stored, bad]) if stored is not None else bad
    meta = ("_file", "_row", "_ingested_at")
    for name in combined.columns:
        if name not in meta:
            combined[name] = combined[name].astype(object).where(combined[name].notna(), None)
    identity = [c for c in combined.columns if c not in meta]
    combined = combined.loc[~combined.duplicated(identity, keep="first")].reset_index(drop=True)
    if stored is not None and len(combined) == len(stored):
        return None
    combined["_row"] = combined["_row"].astype("Int64")
    return combined
