"""One table's export read and validated file by file and put together, and the checks across the tables
that stop or warn before anything is written (one currency, an as-of after every event, discounts as
percentages)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from sendwise import asof, contract
from sendwise.contract import Table
from sendwise.ingest.errors import IngestError
from sendwise.ingest.options import Options
from sendwise.ingest.parse import format_number
from sendwise.ingest.progress import ProgressBars
from sendwise.ingest.read import Source, canonical_columns, read_chunks
from sendwise.ingest.validate import FileChecker
from sendwise.tombstones import CUSTOMER_KEY, Tombstones


@dataclass
class Batch:
    """One table's export: its valid rows (raw store types) and quarantined rows, from all its files."""

    table: Table
    files: list[str]
    valid: pd.DataFrame
    bad: pd.DataFrame
    reasons: Counter[str]
    rows_read: int
    currencies: dict[str, set[str]]
    unknown_zone_names: int
    forgotten: int = 0
    """Rows of erased customers (tombstoned) dropped from this export: valid and bad rows alike."""


ValidRows = Callable[[pd.DataFrame], None]
"""Where an event table's valid rows go, a chunk at a time, as they are checked (``read_table``)."""


def read_table(
    source: Source,
    options: Options,
    warnings: list[str],
    progress: ProgressBars,
    *,
    chunk_rows: int | None = None,
    valid_rows: ValidRows | None = None,
) -> Batch:
    """Read and validate every file of ``source``, in name order, into one ``Batch``.

    With ``valid_rows`` each file is read and checked in chunks of at most ``chunk_rows`` rows and each chunk's
    valid rows are handed to it as they come, not kept (the batch's ``valid`` is then empty): the memory this
    takes is that of a chunk and of the quarantined rows, not of the table."""
    table = contract.TABLES[source.table]
    kept: list[pd.DataFrame] = []
    bad: list[pd.DataFrame] = []
    reasons: Counter[str] = Counter()
    rows_read = unknown_zone_names = missing_profiling = 0
    currencies: dict[str, set[str]] = {}
    for path in source.files:
        label = source.label(path)
        checker = FileChecker(table, label, options, warnings)
        malformed: list[str] = []
        expected_fields = 0
        found: set[str] = set()
        file_reasons: Counter[str] = Counter()
        order: dict[str, int] = {}
        first = True
        for read in read_chunks(path, label, options, chunk_rows if valid_rows is not None else None):
            if first:
                progress.advance(table.name)
                first = False
            read.frame = canonical_columns(table, read.frame, label, warnings if not found else [])
            found.add(label)
            result = checker.check_chunk(read)
            malformed += read.malformed
            expected_fields = read.expected_fields
            if valid_rows is not None:
                valid_rows(result.valid)
            else:
                kept.append(result.valid)
            bad.append(result.bad)
            file_reasons += result.reasons
            for reason, place in result.reason_order.items():
                order.setdefault(reason, place)
            rows_read += result.rows
            unknown_zone_names += result.unknown_zone_names
            missing_profiling += result.missing_profiling
            currencies.setdefault(label, set()).update(result.currencies)
        reasons += Counter({reason: file_reasons[reason] for reason in sorted(file_reasons, key=order.__getitem__)})
        lines = checker.finish(malformed, expected_fields)
        if not lines.empty:
            bad.append(lines)
            reasons[str(lines["_reason"].iloc[0])] += len(lines)
        if not currencies.get(label, True):
            del currencies[label]
        progress.advance(table.name)
    valid = concat(kept) if valid_rows is None else pd.DataFrame()
    if table.attributes:
        valid = unify_attributes(valid)
    if missing_profiling:
        filled = {None: "denied", True: "granted", False: "denied"}[options.profiling_consent]
        warnings.append(
            f"customers: {missing_profiling:,} rows have no consent_profiling value; read as {filled}"
            + ("" if options.profiling_consent is not None else " (the safe choice; pass --profiling-consent)")
        )
    return Batch(
        table=table,
        files=[source.label(p) for p in source.files],
        valid=valid,
        bad=concat(bad),
        reasons=reasons,
        rows_read=rows_read,
        currencies=currencies,
        unknown_zone_names=unknown_zone_names,
    )


def drop_tombstoned(batch: Batch, tombstones: Tombstones) -> None:
    """Drop the rows of erased customers from the batch, valid or quarantined, and count them."""
    if not len(tombstones):
        return
    for part in ("valid", "bad"):
        frame: pd.DataFrame = getattr(batch, part)
        if CUSTOMER_KEY not in frame.columns or frame.empty:
            continue
        hit = tombstones.matches(frame[CUSTOMER_KEY])
        if hit.any():
            batch.forgotten += int(hit.sum())
            setattr(batch, part, frame.loc[~hit].reset_index(drop=True))


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The frames one after the other (frames without columns left out)."""
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame()
    if len(frames) == 1:
        return frames[0]
    non_empty = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(non_empty, ignore_index=True)


def unify_attributes(frame: pd.DataFrame) -> pd.DataFrame:
    """An ``attr_*`` column stays float64 when every value is a number; else every value becomes text."""
    for name in frame.columns:
        if name.startswith(contract.ATTRIBUTE_PREFIX) and frame[name].dtype == object:
            values = frame[name]
            floats = values.map(lambda v: isinstance(v, float), na_action="ignore").fillna(False).astype(bool)
            if floats.any():
                values = values.copy()
                values[floats] = values[floats].map(format_number)
            frame[name] = values
    return frame


def warn_likely_fraction(batch: Batch, warnings: list[str]) -> None:
    """Warn when an offers export gives discounts as fractions (0.2) where the contract asks for percentages."""
    discounts = batch.valid["discount_pct"].dropna() if "discount_pct" in batch.valid else pd.Series()
    if len(discounts) and discounts.max() <= 1 and discounts.max() > 0:
        warnings.append(
            f"{', '.join(batch.files)}, column discount_pct: every value is at most 1 (largest "
            f"{discounts.max():g}); these look like fractions, but the contract asks for percentages from 0 "
            "to 100: multiply them by 100 upstream if so"
        )


def check_currency(batches: dict[str, Batch], previous: str | None) -> str | None:
    """The export's currency, else the home's (None if neither gives one); an export in several currencies,
    or in another than the home's, is an ``IngestError``."""
    found: dict[str, set[str]] = {}
    for batch in batches.values():
        for label, values in batch.currencies.items():
            for value in values:
                found.setdefault(value, set()).add(label)
    if len(found) > 1:
        listing = "; ".join(f"{value} in {', '.join(sorted(files))}" for value, files in sorted(found.items()))
        raise IngestError(
            f"column currency: the data mixes currencies ({listing}). The contract allows one currency per "
            "dataset: convert the amounts upstream, or ingest each currency into its own home."
        )
    currency = next(iter(found), None)
    if currency and previous and currency != previous:
        raise IngestError(
            f"column currency: this export is in {currency}, but the home already holds data in {previous}. "
            "One home holds one data source in one currency: convert upstream or use another SENDWISE_HOME."
        )
    return currency or previous


def check_export_as_of(as_of: pd.Timestamp, batches: dict[str, Batch]) -> None:
    """An export cannot hold events after it was taken: an as-of before any of its events is an error that
    names the as-of, the latest event and the files it is in (nothing is written)."""
    late = [found for name in asof.EVENT_TABLES if name in batches and (found := late_events(as_of, batches[name]))]
    raise_late_events(as_of, late)


LateEvents = tuple[pd.Timestamp, str, int, str]
"""An event table's latest event after the as-of, its name, how many are after it, and its files."""


def late_events(as_of: pd.Timestamp, batch: Batch) -> LateEvents | None:
    """The export's events of ``batch`` after ``as_of`` (``check_export_as_of``), or None."""
    if "occurred_at" not in batch.valid or batch.valid.empty:
        return None
    times = batch.valid["occurred_at"]
    after = int((times > as_of).sum())
    return (times.max(), batch.table.name, after, ", ".join(batch.files)) if after else None


def raise_late_events(as_of: pd.Timestamp, late: list[LateEvents]) -> None:
    """The ``IngestError`` of ``check_export_as_of`` where any event table has events after ``as_of``."""
    if not late:
        return
    latest, _table, after, files = max(late)
    raise IngestError(
        f"--as-of {asof.text(as_of)} is before the latest event of this export: {files}, column occurred_at, "
        f"has {after:,} events after it, the latest at {asof.text(latest)}. An export cannot hold events after "
        "it was taken: give the time the export was taken (check its time zone), or leave --as-of out to use "
        "the data's end. Nothing was ingested."
    )
