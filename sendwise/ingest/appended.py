"""Events appended one batch at a time (`POST /v1/events`, `sendwise push`): checked against the contract row by
row, written durably to an append-only part of the raw store, merged into the raw tables by the next ingest.

A batch's rows of one table become one Parquet file, `raw/appended/<table>/<time>-<random>.parquet`, in the raw
store's types: written to a temporary file beside it, flushed to disk (`fsync`), renamed into place and the
folder flushed, so that once `append_events` returns the rows survive a crash of the process or the machine.
Appending takes no lock: a file appears whole or not at all, so an ingest that lists the folder sees a part or
not, never half of one. The ingest (`sendwise.ingest.run`) merges the parts it listed with the export, deduped
the way every export is (by `event_id`), and removes them in the same commit as the raw tables they went into
(`sendwise.raw.commit`): an ingest killed before the commit leaves them to the next one, one killed during it
is finished by the next.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from sendwise import contract
from sendwise.ingest.errors import IngestError
from sendwise.ingest.options import check_options
from sendwise.ingest.parse import STRING
from sendwise.ingest.read import Read
from sendwise.ingest.validate import FileChecker
from sendwise.settings import Settings
from sendwise.tombstones import CUSTOMER_KEY, Tombstones

APPENDABLE = ("customers", "email_events", "site_events", "offer_events")
"""The contract tables whose rows may be appended one batch at a time: the event tables, and `customers`, whose
row is how a sending system says that a person withdrew (or gave) consent now. A customers row is a whole row:
merged by the next ingest as an export's row is, it replaces the customer's stored row where its `updated_at` is
the latest."""
CUSTOMERS = "customers"
TABLE_FIELD = "table"
MAX_EVENTS = 10_000
"""Rows one batch may hold (`POST /v1/events`; `sendwise push` sends a longer file in chunks of this size)."""


@dataclass(frozen=True)
class RowProblem:
    """One bad row of a batch: its position, the field and what is wrong."""

    index: int
    field: str
    message: str

    @property
    def name(self) -> str:
        """The field as an answer names it: `events[3].occurred_at` (`events[3]` for the row as a whole)."""
        return f"events[{self.index}]" + (f".{self.field}" if self.field else "")


class EventsError(ValueError):
    """A batch with bad rows: nothing of it was appended."""

    def __init__(self, problems: Sequence[RowProblem]) -> None:
        self.problems = list(problems)
        shown = "; ".join(f"{p.name}: {p.message}" for p in self.problems[:5])
        more = f"; and {len(self.problems) - 5} more" if len(self.problems) > 5 else ""
        super().__init__(f"{len(self.problems)} bad rows, nothing appended: {shown}{more}")


@dataclass
class CheckedEvents:
    """A batch's rows in the raw store's types, by table, with the request positions they came from."""

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    positions: dict[str, np.ndarray] = field(default_factory=dict)
    forgotten: int = 0
    """Rows of erased customers left out."""
    received_at: pd.Timestamp = field(default_factory=lambda: pd.Timestamp.now(tz="UTC"))
    """When the batch was checked: the `updated_at` of customers rows that have none."""

    @property
    def rows(self) -> int:
        return sum(len(frame) for frame in self.frames.values())


def appended_dir(settings: Settings) -> Path:
    return settings.raw_dir / "appended"


def _text(value: object) -> str | None:
    """A JSON value as the text a CSV export would hold (None: missing)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return None if math.isnan(value) else repr(value)
    if isinstance(value, str | int):
        return str(value)
    raise TypeError(type(value).__name__)


def check_events(rows: Sequence[Mapping[str, object]], settings: Settings) -> CheckedEvents:
    """The rows checked against the contract table each names; `EventsError` naming every bad row and field.

    Rows of erased customers (tombstoned) are left out and counted, never named."""
    problems: list[RowProblem] = []
    by_table: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        table = row.get(TABLE_FIELD)
        if table not in APPENDABLE:
            problems.append(RowProblem(index, TABLE_FIELD, f"expected one of {', '.join(APPENDABLE)}"))
            continue
        columns = contract.TABLES[str(table)].column_names
        allowed = (*columns, contract.CURRENCY_COLUMN) if contract.TABLES[str(table)].money else columns
        for name, value in row.items():
            if name == TABLE_FIELD:
                continue
            if name not in allowed and not (table == CUSTOMERS and name.startswith(contract.ATTRIBUTE_PREFIX)):
                problems.append(RowProblem(index, name, f"not a column of {table} (its columns: {', '.join(columns)})"))
            elif value is not None and not isinstance(value, str | int | float | bool):
                problems.append(RowProblem(index, name, "expected a string, number, boolean or null"))
        if table == CUSTOMERS and row.get("consent_profiling") is None:
            problems.append(RowProblem(index, "consent_profiling", NO_PROFILING_CONSENT))
        by_table.setdefault(str(table), []).append(index)
    if problems:
        raise EventsError(problems)
    checked = CheckedEvents()
    options = check_options(None, None, None, False)
    for table_name, indexes in by_table.items():
        table = contract.TABLES[table_name]
        names = [*table.column_names, *([contract.CURRENCY_COLUMN] if table.money else [])]
        if table.attributes:
            names += sorted({n for i in indexes for n in rows[i] if n.startswith(contract.ATTRIBUTE_PREFIX)})
        frame = pd.DataFrame(
            {name: pd.Series([_text(rows[i].get(name)) for i in indexes], dtype=STRING) for name in names}
        )
        try:
            result = FileChecker(table, f"events ({table_name})", options, []).check(Read(frame, columns=names))
        except IngestError as error:  # a timestamp without a zone: the contract asks for one
            problems.extend(RowProblem(i, "", str(error)) for i in indexes[:1])
            continue
        problems.extend(_row_problems(result.bad, indexes))
        valid = result.valid
        if contract.CURRENCY_COLUMN in valid.columns:
            valid = valid.drop(columns=contract.CURRENCY_COLUMN)
        kept = np.asarray(indexes)[~_bad_rows(result.bad, len(indexes))]
        if table_name == CUSTOMERS:
            valid = _stamped(valid, checked.received_at)
        checked.frames[table_name] = valid
        checked.positions[table_name] = kept
    if problems:
        raise EventsError(sorted(problems, key=lambda p: p.index))
    _drop_forgotten(checked, Tombstones.read(settings))
    return checked


NO_PROFILING_CONSENT = (
    "missing: a customers row sent as an event must say whether the customer allows profiling "
    "(true or false; the ingest's --profiling-consent does not apply to it)"
)


def _stamped(customers: pd.DataFrame, received_at: pd.Timestamp) -> pd.DataFrame:
    """Customers rows without `updated_at` stamped with the time they were received: the next ingest then ranks
    them after the rows stored before them, as the online store does (a row without one would lose to any with one)."""
    customers = customers.copy()
    stamp = pd.Timestamp(received_at).tz_convert("UTC")
    customers["updated_at"] = customers["updated_at"].fillna(stamp).astype(customers["updated_at"].dtype)
    return customers


def _bad_rows(bad: pd.DataFrame, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    if not bad.empty:
        mask[bad["_row"].astype(int).to_numpy() - 1] = True
    return mask


def _row_problems(bad: pd.DataFrame, indexes: list[int]) -> list[RowProblem]:
    """The quarantine's reasons (`occurred_at: not an ISO 8601 timestamp with a zone; event: missing`) as
    one problem per field, at the row's position in the request."""
    found: list[RowProblem] = []
    for row, reasons in zip(bad["_row"].astype(int), bad["_reason"].astype(str), strict=True):
        for reason in reasons.split("; "):
            name, _, message = reason.partition(": ")
            found.append(RowProblem(indexes[row - 1], name, message or reason))
    return found


def _drop_forgotten(checked: CheckedEvents, tombstones: Tombstones) -> None:
    if not len(tombstones):
        return
    for name, frame in checked.frames.items():
        hit = tombstones.matches(frame[CUSTOMER_KEY]).to_numpy()
        if hit.any():
            checked.forgotten += int(hit.sum())
            checked.frames[name] = frame.loc[~hit].reset_index(drop=True)
            checked.positions[name] = checked.positions[name][~hit]


def append_events(settings: Settings, checked: CheckedEvents) -> dict[str, int]:
    """Write each table's rows to a new part of the append-only store, durably; rows written per table."""
    written: dict[str, int] = {}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    for name, frame in checked.frames.items():
        if frame.empty:
            continue
        folder = appended_dir(settings) / name
        _write_durably(frame, folder / f"{stamp}-{uuid.uuid4().hex[:12]}.parquet")
        written[name] = len(frame)
    return written


def _write_durably(frame: pd.DataFrame, path: Path) -> None:
    """`frame` as the Parquet file `path`, whole and on disk before this returns (or not there at all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".parquet.tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            frame.to_parquet(file, index=False)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself on disk
    finally:
        os.close(folder)


def pending_parts(settings: Settings) -> dict[str, list[Path]]:
    """The appended parts not merged yet, per table, oldest first."""
    found: dict[str, list[Path]] = {}
    for name in APPENDABLE:
        folder = appended_dir(settings) / name
        parts = sorted(folder.glob("[!.]*.parquet")) if folder.is_dir() else []
        if parts:
            found[name] = parts
    return found


def read_parts(parts: Sequence[Path]) -> pd.DataFrame:
    """The parts' rows, one after the other."""
    return pd.concat([pd.read_parquet(path) for path in parts], ignore_index=True)


STRAY_SECONDS = 3600
"""How old a temporary file of an append must be to be taken for one a killed append left (a younger one may
be an append still writing: appends take no lock)."""


def remove_stray_temporaries(settings: Settings) -> None:
    """Temporary files killed appends left (never renamed, so never part of the store)."""
    now = datetime.now(UTC).timestamp()
    for name in APPENDABLE:
        folder = appended_dir(settings) / name
        if folder.is_dir():
            for stray in folder.glob(".*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    if now - stray.stat().st_mtime > STRAY_SECONDS:
                        stray.unlink()
