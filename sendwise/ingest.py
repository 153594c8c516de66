"""Ingest: read data-contract files, validate them, quarantine bad rows, merge into the raw store, report.

What a valid row is comes from ``sendwise.contract``; this module applies it, vectorized (pandas and Arrow,
no Python loop over the rows of the big tables), and decides nothing of its own beyond what the contract and
``docs/architecture.md`` say. Whole-file problems raise ``IngestError`` before anything is written; bad rows
go to ``settings.quarantine_dir / f"{table}.parquet"`` with their reason, and the rest is ingested.

Merging with what the raw store already holds (so that re-ingesting the same files changes nothing and a later
export adds to what is there):

- events: deduplicated by ``event_id``, the row already stored wins; a missing ``event_id`` is replaced by
  ``h-`` + the SHA-1 of the row's contract columns (normalized, in contract order), so identical rows of an
  export without ids count as one event, re-delivered;
- customers: the row with the latest ``updated_at`` wins (a row without one loses to a row with one); on a
  tie, or where no row has one, the later row wins: later in file order (parts in name order), and a row of
  this export is later than the stored one;
- campaigns and offers: the later row wins, in the same order.

Time zones that were inferred are inferred again at every ingest, from all the data then in the store.
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
import zoneinfo
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from sendwise import asof, contract, raw, timezones
from sendwise.contract import Column, Kind, Table
from sendwise.settings import Settings

STRING = contract.STRING
TIMESTAMP = pd.DatetimeTZDtype("us", "UTC")
TOP_REASONS = 5
CSV_DELIMITERS = {",": ",", ";": ";", "\t": "\t", "tab": "\t", "\\t": "\t"}
_SNIFF_BYTES = 1 << 16
_ZONED = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"
_THOUSANDS = r"^[+-]?\d{1,3}(?:\.\d{3})+(?:,\d*)?$"
_DECIMAL_COMMA = r"^[+-]?\d+,\d+$"
_BOOLEAN_HELP = "true/false, 1/0, yes/no, y/n, t/f"


class IngestError(ValueError):
    """A whole-file problem: nothing was ingested. The message says which file, what and what to do."""


# --- the report -------------------------------------------------------------------------------------------
class ReasonCount(BaseModel):
    reason: str
    rows: int


class TimeSpan(BaseModel):
    first: datetime | None = None
    last: datetime | None = None

    def text(self) -> str:
        if self.first is None or self.last is None:
            return "-"
        return f"{self.first:%Y-%m-%d %H:%M} – {self.last:%Y-%m-%d %H:%M} UTC"


class TableReport(BaseModel):
    """What one table's export brought. ``accepted`` = ``rows_read`` − ``duplicates`` − ``quarantined``."""

    table: str
    files: list[str]
    rows_read: int
    accepted: int
    duplicates: int = Field(description="valid rows that changed nothing: already stored, or superseded")
    quarantined: int
    top_reasons: list[ReasonCount] = Field(default_factory=list)
    added: int = Field(description="rows new to the raw store")
    updated: int = Field(default=0, description="stored customers, campaigns or offers replaced by a newer row")
    rows_in_store: int
    span: TimeSpan = Field(default_factory=TimeSpan, description="time span of the rows read and accepted")
    store_span: TimeSpan = Field(default_factory=TimeSpan, description="time span of the raw table")
    unknown_customer_events: int | None = Field(
        default=None, description="events in the raw table whose customer is not (yet) a known customer"
    )
    unknown_customers: int | None = None


class TimezoneCoverage(BaseModel):
    """Where the zones of the customers in the raw store come from (``sendwise.timezones``)."""

    given: int = 0
    country: int = 0
    activity: int = 0
    unknown: int = 0
    unknown_names: int = Field(default=0, description="given names zoneinfo does not know (treated as missing)")


class IngestOptions(BaseModel):
    assume_tz: str | None = None
    profiling_consent: Literal["granted", "denied"] | None = None
    csv_delimiter: str | None = None
    decimal_comma: bool = False
    as_of: datetime | None = None


class IngestReport(BaseModel):
    """The report every ingest prints and stores under ``reports_dir / "ingest"``."""

    data_dir: str
    home: str
    started_at: datetime
    seconds: float
    options: IngestOptions
    currency: str | None = None
    tables: dict[str, TableReport]
    skipped_tables: list[str] = Field(description="optional tables absent from this export")
    opens: int = 0
    machine_opens: int = 0
    machine_open_share: float | None = Field(
        default=None, description="share of the opens in the raw store flagged machine_open by the ESP"
    )
    timezones: TimezoneCoverage = Field(default_factory=TimezoneCoverage)
    as_of: datetime | None = Field(
        default=None,
        description="when the export was taken: --as-of where given, else the data's end (the hour after the "
        "raw store's latest event); recorded with the raw store for the feature build",
    )
    as_of_given: bool = False
    warnings: list[str] = Field(default_factory=list)
    report_file: str | None = None

    def to_text(self) -> str:
        """The report as plain text (rich tables), for the console."""
        buffer = io.StringIO()
        console = Console(file=buffer, width=120, color_system=None, force_terminal=False)
        console.print(f"Ingest of {self.data_dir} into {self.home} ({self.seconds:.1f} s)")
        counts = RichTable(title="Tables", title_justify="left")
        for name in (
            "table",
            "read",
            "accepted",
            "duplicates",
            "quarantined",
            "added",
            "updated",
            "in store",
        ):
            counts.add_column(name, justify="left" if name == "table" else "right")
        counts.add_column("time span (accepted rows)")
        for table in self.tables.values():
            counts.add_row(
                table.table,
                *(
                    f"{value:,}"
                    for value in (
                        table.rows_read,
                        table.accepted,
                        table.duplicates,
                        table.quarantined,
                        table.added,
                        table.updated,
                        table.rows_in_store,
                    )
                ),
                table.span.text(),
            )
        console.print(counts)
        reasons = [(t.table, r) for t in self.tables.values() for r in t.top_reasons]
        if reasons:
            quarantine = RichTable(title="Top quarantine reasons", title_justify="left")
            quarantine.add_column("table")
            quarantine.add_column("reason")
            quarantine.add_column("rows", justify="right")
            for table_name, reason in reasons:
                quarantine.add_row(table_name, reason.reason, f"{reason.rows:,}")
            console.print(quarantine)
        facts = RichTable(title="Data facts", title_justify="left", show_header=False)
        facts.add_column("fact")
        facts.add_column("value")
        for table in self.tables.values():
            if table.unknown_customer_events is not None:
                facts.add_row(
                    f"{table.table}: events of unknown customers (kept)",
                    f"{table.unknown_customer_events:,} ({table.unknown_customers or 0:,} customers)",
                )
        if self.machine_open_share is not None:
            facts.add_row(
                "opens flagged as machine opens",
                f"{self.machine_open_share:.1%} ({self.machine_opens:,} of {self.opens:,})",
            )
        zones = self.timezones
        facts.add_row(
            "customer time zones",
            f"given {zones.given:,}, from country {zones.country:,}, from activity hours {zones.activity:,}, "
            f"unknown (UTC) {zones.unknown:,}",
        )
        facts.add_row("currency", self.currency or "not given")
        if self.as_of is not None:
            how = "given with --as-of" if self.as_of_given else "the data's end: no --as-of given"
            facts.add_row("export taken (as-of)", f"{asof.text(pd.Timestamp(self.as_of))} ({how})")
        facts.add_row("skipped tables (not in this export)", ", ".join(self.skipped_tables) or "none")
        console.print(facts)
        for warning in self.warnings:
            console.print(f"warning: {warning}", markup=False)
        if self.report_file:
            console.print(f"report: {self.report_file}", markup=False)
        return buffer.getvalue()


# --- options and discovery --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Options:
    assume_tz: str | None
    profiling_consent: bool | None
    csv_delimiter: str | None
    decimal_comma: bool


def _check_options(
    assume_tz: str | None, profiling_consent: str | None, csv_delimiter: str | None, decimal_comma: bool
) -> _Options:
    if assume_tz is not None:
        try:
            zoneinfo.ZoneInfo(assume_tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
            raise IngestError(
                f"--assume-tz {assume_tz!r} is not a time zone that zoneinfo knows; give a zone name such as "
                "Europe/Berlin, America/New_York or UTC."
            ) from error
    if profiling_consent not in (None, "granted", "denied"):
        raise IngestError(f"--profiling-consent {profiling_consent!r}: expected 'granted' or 'denied'.")
    delimiter = None
    if csv_delimiter is not None:
        delimiter = CSV_DELIMITERS.get(csv_delimiter.lower() if len(csv_delimiter) > 1 else csv_delimiter)
        if delimiter is None:
            raise IngestError(
                f"--csv-delimiter {csv_delimiter!r}: expected one of ',', ';' or 'tab' (a tab character)."
            )
    consent = None if profiling_consent is None else profiling_consent == "granted"
    return _Options(assume_tz, consent, delimiter, decimal_comma)


@dataclass
class _Source:
    table: str
    files: list[Path]
    root: Path

    def label(self, path: Path) -> str:
        return str(path.relative_to(self.root))


def _format_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return suffix[1:] if suffix in (".csv", ".parquet") else None


def _discover(data_dir: Path, warnings: list[str]) -> dict[str, _Source]:
    """The table entries of ``data_dir`` (contract "Layout"); anything else is named in a warning."""
    if not data_dir.is_dir():
        raise IngestError(f"{data_dir}: not a directory. Give the directory that holds the exported tables.")
    entries: dict[str, list[Path]] = {}
    ignored: list[str] = []
    for path in sorted(data_dir.iterdir()):
        name = path.name.lower()
        if path.is_dir() and name in contract.TABLES:
            entries.setdefault(name, []).append(path)
        elif path.is_file() and _format_of(path) and path.stem.lower() in contract.TABLES:
            entries.setdefault(path.stem.lower(), []).append(path)
        else:
            ignored.append(path.name + ("/" if path.is_dir() else ""))
    sources: dict[str, _Source] = {}
    for table, paths in entries.items():
        if len(paths) > 1:
            found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in paths)
            raise IngestError(
                f"{data_dir}: table {table} has {len(paths)} entries ({found}); the contract allows one "
                f"({table}.parquet, {table}.csv or a {table}/ folder of parts). Keep one and run the ingest "
                "again."
            )
        entry = paths[0]
        if entry.is_file():
            sources[table] = _Source(table, [entry], data_dir)
            continue
        parts = sorted(p for p in entry.iterdir() if p.is_file() and _format_of(p))
        ignored += [str(p.relative_to(data_dir)) for p in sorted(entry.iterdir()) if p not in parts]
        formats = {fmt for p in parts if (fmt := _format_of(p))}
        if len(formats) > 1:
            listing = "; ".join(
                f".{fmt}: " + ", ".join(p.name for p in parts if _format_of(p) == fmt) for fmt in sorted(formats)
            )
            raise IngestError(
                f"{entry}/: the parts mix formats ({listing}). A table folder holds parts of one format "
                "(all .parquet or all .csv); move the others out and run the ingest again."
            )
        if not parts:
            warnings.append(f"{entry.name}/ holds no .parquet or .csv parts; table {table} was skipped")
            continue
        sources[table] = _Source(table, parts, data_dir)
    if ignored:
        warnings.append(
            "ignored (not a contract table entry): "
            + ", ".join(ignored)
            + f"; tables are {', '.join(contract.TABLES)} as TABLE.parquet, TABLE.csv or a TABLE/ folder"
        )
    if "customers" not in sources:
        raise IngestError(
            f"{data_dir}: no customers table. Expected customers.csv, customers.parquet or a customers/ "
            "folder of parts; customers is the one table the contract requires. Add it and run the ingest "
            "again."
        )
    return sources


# --- reading files ------------------------------------------------------------------------------------------
@dataclass
class _Read:
    frame: pd.DataFrame  # original columns, renamed to the contract's spelling
    malformed: list[str] = field(default_factory=list)  # CSV lines with the wrong number of fields
    expected_fields: int = 0
    delimiter: str | None = None  # CSV only
    columns: list[str] = field(default_factory=list)  # as the file names them


def _detect_delimiter(header: str) -> str:
    counts = {delimiter: header.count(delimiter) for delimiter in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def _read_csv(path: Path, label: str, options: _Options) -> _Read:
    with path.open("rb") as file:
        head = file.read(_SNIFF_BYTES)
    if not head.strip():
        raise IngestError(f"{label}: the file is empty; expected a header line with the column names.")
    try:
        header_line = head.decode("utf-8-sig", errors="strict").splitlines()[0]
    except UnicodeDecodeError:
        # the sniffed block may end inside a multi-byte character
        try:
            header_line = head.split(b"\n", 1)[0].decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise IngestError(f"{label}: not UTF-8 text ({error}). Export it as UTF-8 (a BOM is fine).") from error
    delimiter = options.csv_delimiter or _detect_delimiter(header_line)
    names = [name.strip() for name in next(csv.reader([header_line], delimiter=delimiter))]
    doubled = sorted({name for name in names if names.count(name) > 1})
    if doubled:
        raise IngestError(f"{label}: column {doubled[0]} appears more than once; keep one and run the ingest again.")
    malformed: list[str] = []

    def skip(row: pacsv.InvalidRow) -> str:
        malformed.append(row.text or "")
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=skip),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=True,
                null_values=[""],
                quoted_strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as error:
        if "utf8" in str(error).lower():
            raise IngestError(f"{label}: not UTF-8 text ({error}). Export it as UTF-8 (a BOM is fine).") from error
        raise IngestError(f"{label}: not readable as CSV with delimiter {delimiter!r} ({error}).") from error
    frame = table.to_pandas(types_mapper={pa.string(): STRING, pa.large_string(): STRING}.get)
    return _Read(frame, malformed, len(names), delimiter, names)


def _read_parquet(path: Path, label: str) -> _Read:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise IngestError(f"{label}: not a readable Parquet file ({error}).") from error
    frame = table.to_pandas(types_mapper={pa.string(): STRING, pa.large_string(): STRING}.get)
    return _Read(frame.reset_index(drop=True), columns=[str(c) for c in frame.columns])


def _canonical_columns(table: Table, frame: pd.DataFrame, label: str, warnings: list[str]) -> pd.DataFrame:
    """Rename columns to the contract's spelling (case and spaces aside); drop and name the unknown ones."""
    known = {name.lower(): name for name in table.column_names}
    if table.money:
        known[contract.CURRENCY_COLUMN] = contract.CURRENCY_COLUMN
    renamed: dict[str, str] = {}
    unknown: list[str] = []
    for original in frame.columns:
        name = str(original).strip()
        if name.lower() in known:
            renamed[original] = known[name.lower()]
        elif table.attributes and name.lower().startswith(contract.ATTRIBUTE_PREFIX) and len(name) > 5:
            renamed[original] = contract.ATTRIBUTE_PREFIX + name[5:]
        else:
            unknown.append(name)
    seen = Counter(renamed.values())
    doubled = [name for name, count in seen.items() if count > 1]
    if doubled:
        raise IngestError(f"{label}: column {doubled[0]} appears more than once; keep one and run the ingest again.")
    if unknown:
        warnings.append(f"{label}: columns not in the contract were ignored: {', '.join(unknown)}")
    return frame[list(renamed)].rename(columns=renamed)


# --- parsing values -----------------------------------------------------------------------------------------
def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _text(raw: pd.Series) -> pd.Series:
    """Values as trimmed pyarrow strings; empty is missing. Numbers from Parquet keep their digits."""
    if pd.api.types.is_bool_dtype(raw.dtype):
        raw = raw.map({True: "true", False: "false"}, na_action="ignore")
    elif pd.api.types.is_float_dtype(raw.dtype):
        raw = raw.map(_format_number, na_action="ignore")
    text = raw.astype(STRING).str.strip()
    return text.mask((text == "").fillna(False))


def _mask(values: pd.Series) -> np.ndarray:
    return values.fillna(False).to_numpy(dtype=bool)


def _objects(values: pd.Series) -> pd.Series:
    """Strings as the raw store holds them: Python ``str`` or None (object dtype)."""
    return pd.Series(values.to_numpy(dtype=object, na_value=None), index=values.index, dtype=object)


def _parse_numbers(raw: pd.Series, decimal_comma: bool) -> tuple[pd.Series, np.ndarray, pd.Series | None]:
    """Numbers as float64, the mask of values that are not finite numbers, and the text (None if typed)."""
    if pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype):
        numbers = pd.Series(raw.to_numpy(dtype=float, na_value=np.nan), index=raw.index)
        return numbers, ~np.isfinite(numbers.to_numpy()) & raw.notna().to_numpy(), None
    text = _text(raw)
    if decimal_comma:
        thousands = _mask(text.str.contains(_THOUSANDS, regex=True))
        if thousands.any():
            text = text.where(~thousands, text.str.replace(".", "", regex=False))
        text = text.str.replace(",", ".", regex=False)
    try:
        numbers = pd.Series(pa.array(text.array).cast(pa.float64()).to_numpy(zero_copy_only=False), index=raw.index)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        numbers = pd.to_numeric(pd.Series(text.to_numpy(dtype=object, na_value=None)), errors="coerce")
        numbers.index = raw.index
    numbers = numbers.astype(float)
    bad = text.notna().to_numpy() & ~np.isfinite(numbers.to_numpy())
    numbers[bad] = np.nan
    return numbers, bad, text


@dataclass
class _Timestamps:
    values: pd.Series  # datetime64[us, UTC]
    bad: np.ndarray  # present but not a timestamp
    zoneless: np.ndarray  # a timestamp without a zone (an error unless assume_tz)
    text: pd.Series | None


def _parse_timestamps(raw: pd.Series, assume_tz: str | None) -> _Timestamps:
    none = np.zeros(len(raw), dtype=bool)
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return _Timestamps(raw.dt.tz_convert("UTC").astype(TIMESTAMP), none, none, None)
    if pd.api.types.is_datetime64_dtype(raw.dtype):
        return _localize(raw, raw.notna().to_numpy(), assume_tz, none, None)
    if pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype):
        raise TypeError(str(raw.dtype))
    text = _text(raw)
    try:
        parsed = pa.array(text.array).cast(pa.timestamp("us", "UTC"))
        values = parsed.to_pandas().astype(TIMESTAMP)
        values.index = raw.index
        return _Timestamps(values, none, none, text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = text.str.replace(r"(\d)z$", r"\1Z", regex=True)
    zoned = _mask(text.str.contains(_ZONED, regex=True))
    values = pd.Series(pd.NaT, index=raw.index, dtype=TIMESTAMP)
    if zoned.any():
        subset = text[zoned].to_numpy(dtype=object)
        values[zoned] = pd.to_datetime(subset, utc=True, format="ISO8601", errors="coerce").as_unit("us")
    naive_candidates = text.notna().to_numpy() & ~zoned
    wall = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[us]")
    if naive_candidates.any():
        subset = text[naive_candidates].to_numpy(dtype=object)
        parsed_wall = pd.to_datetime(subset, utc=True, format="ISO8601", errors="coerce")
        wall[naive_candidates] = parsed_wall.tz_localize(None).as_unit("us")
    zoneless = wall.notna().to_numpy()
    result = _localize(wall, zoneless, assume_tz, none, text)
    result.values = result.values.where(zoneless, values)
    result.bad = text.notna().to_numpy() & result.values.isna().to_numpy() & ~(zoneless & (assume_tz is None))
    return result


def _localize(
    wall: pd.Series, zoneless: np.ndarray, assume_tz: str | None, bad: np.ndarray, text: pd.Series | None
) -> _Timestamps:
    if assume_tz is None or not zoneless.any():
        return _Timestamps(pd.Series(pd.NaT, index=wall.index, dtype=TIMESTAMP), bad, zoneless, text)
    # an ambiguous wall time (the hour repeated when clocks go back) is read as the first of the two
    localized = wall.dt.tz_localize(assume_tz, ambiguous=np.ones(len(wall), dtype=bool), nonexistent="shift_forward")
    return _Timestamps(localized.dt.tz_convert("UTC").astype(TIMESTAMP), bad, zoneless, text)


# --- one file -----------------------------------------------------------------------------------------------
@dataclass
class _Checked:
    """A file's rows split into valid (raw store dtypes) and quarantined (original text with the reason)."""

    valid: pd.DataFrame
    bad: pd.DataFrame
    reasons: Counter[str]
    rows: int
    currencies: set[str]
    unknown_zone_names: int = 0
    missing_profiling: int = 0


class _Problems:
    """The reasons each row breaks the contract, collected column by column."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.items: list[tuple[np.ndarray, str]] = []

    def add(self, mask: np.ndarray, reason: str) -> None:
        if mask.any():
            self.items.append((mask, reason))

    def any(self) -> np.ndarray:
        result = np.zeros(self.rows, dtype=bool)
        for mask, _ in self.items:
            result |= mask
        return result

    def reasons(self, rows: np.ndarray) -> np.ndarray:
        text = np.full(self.rows, "", dtype=object)
        for mask, reason in self.items:
            text[mask] = np.where(text[mask] == "", reason, text[mask] + "; " + reason)
        return text[rows]

    def counts(self) -> Counter[str]:
        return Counter({reason: int(mask.sum()) for mask, reason in self.items})


def _missing_value(column: Column, index: pd.Index) -> pd.Series:
    if column.kind == Kind.TIMESTAMP:
        return pd.Series(pd.NaT, index=index, dtype=TIMESTAMP)
    if column.kind in (Kind.FLOAT, Kind.INT):
        return pd.Series(np.nan, index=index, dtype=float)
    if column.kind == Kind.BOOL:
        return pd.Series(pd.NA, index=index, dtype="boolean")
    if column.kind == Kind.INTERESTS:
        return pd.Series("", index=index, dtype=object)
    return pd.Series(None, index=index, dtype=object)


class _FileChecker:
    """Applies the contract to the columns of one file."""

    def __init__(self, table: Table, label: str, options: _Options, warnings: list[str]) -> None:
        self.table = table
        self.label = label
        self.options = options
        self.warnings = warnings
        self.unknown_zone_names = 0

    def where(self, column: str) -> str:
        return f"{self.label}, column {column}"

    def check(self, read: _Read) -> _Checked:
        frame = read.frame
        problems = _Problems(len(frame))
        out: dict[str, pd.Series] = {}
        for column in self.table.columns:
            if column.name in frame.columns:
                out[column.name] = self.parse(column, frame[column.name], problems)
            elif column.required:
                how = ""
                if read.delimiter is not None:
                    how = f" (read with delimiter {read.delimiter!r}: pass --csv-delimiter if that is wrong)"
                raise IngestError(
                    f"{self.where(column.name)}: missing. The {self.table.name} table requires the columns "
                    f"{', '.join(self.table.required)}; the file has {', '.join(read.columns)}{how}."
                )
            else:
                out[column.name] = _missing_value(column, frame.index)
        missing_profiling = 0
        if self.table.name == "customers":
            missing_profiling = self.fill_profiling_consent(frame, out)
            out["timezone_inferred"] = out["timezone"].isna()
            for name in frame.columns:
                if name.startswith(contract.ATTRIBUTE_PREFIX):
                    out[name] = self.attribute(frame[name])
        currencies: set[str] = set()
        if contract.CURRENCY_COLUMN in frame.columns:
            currencies = set(_text(frame[contract.CURRENCY_COLUMN]).str.upper().dropna().unique())
        bad = problems.any()
        valid = pd.DataFrame(out, index=frame.index).loc[~bad].reset_index(drop=True)
        if self.table.is_event:
            valid[self.table.key] = _fill_event_ids(self.table, valid)
        quarantined = _quarantine_rows(frame, bad, problems.reasons(bad), self.label)
        reasons = problems.counts()
        if read.malformed:
            reason = f"row: not {read.expected_fields} fields like the header"
            malformed = pd.DataFrame(
                {"_text": read.malformed, "_reason": reason, "_file": self.label, "_row": None}, dtype=object
            )
            quarantined = pd.concat([quarantined, malformed], ignore_index=True)
            reasons[reason] += len(read.malformed)
        return _Checked(
            valid=valid,
            bad=quarantined,
            reasons=reasons,
            rows=len(frame) + len(read.malformed),
            currencies=currencies,
            unknown_zone_names=self.unknown_zone_names,
            missing_profiling=missing_profiling,
        )

    def fill_profiling_consent(self, frame: pd.DataFrame, out: dict[str, pd.Series]) -> int:
        consent = self.options.profiling_consent
        if "consent_profiling" not in frame.columns:
            if consent is None:
                raise IngestError(
                    f"{self.where('consent_profiling')}: the column is absent, so sendwise cannot tell "
                    "whether these customers may be scored on their own data. Add the column, or run the "
                    "ingest with --profiling-consent granted or --profiling-consent denied."
                )
            out["consent_profiling"] = pd.Series(consent, index=frame.index, dtype="boolean")
            return 0
        values = out["consent_profiling"]
        missing = int(values.isna().sum())
        out["consent_profiling"] = values.fillna(False if consent is None else consent)
        return missing

    def parse(self, column: Column, raw: pd.Series, problems: _Problems) -> pd.Series:
        parser = {
            Kind.ID: self.ids,
            Kind.TEXT: self.texts,
            Kind.TIMESTAMP: self.timestamps,
            Kind.BOOL: self.booleans,
            Kind.FLOAT: self.numbers,
            Kind.INT: self.numbers,
            Kind.CHOICE: self.choices,
            Kind.TIMEZONE: self.zones,
            Kind.COUNTRY: self.countries,
            Kind.INTERESTS: self.interests,
        }[column.kind]
        values, missing = parser(column, raw, problems)
        if column.required:
            problems.add(missing, f"{column.name}: missing")
        return values

    def ids(self, column: Column, raw: pd.Series, problems: _Problems) -> tuple[pd.Series, np.ndarray]:
        text = _text(raw)
        problems.add(
            _mask(text.str.len() > contract.MAX_ID_LENGTH),
            f"{column.name}: longer than {contract.MAX_ID_LENGTH} characters",
        )
        if column.name == "customer_id":
            problems.add(
                contract.looks_like_email(text).to_numpy(),
                "customer_id: looks like an email address (a direct identifier; hash it upstream)",
            )
        return _objects(text), text.isna().to_numpy()

    def texts(self, column: Column, raw: pd.Series, problems: _Problems) -> tuple[pd.Series, np.ndarray]:
        text = _text(raw)
        return _objects(text), text.isna().to_numpy()

    def timestamps(self, column: Column, raw: pd.Series, problems: _Problems) -> tuple[pd.Series, np.ndarray]:
        try:
            parsed = _parse_timestamps(raw, self.options.assume_tz)
        except TypeError as error:
            raise IngestError(
                f"{self.where(column.name)}: values of type {error}; expected ISO 8601 text with Z or an "
                "offset (2026-11-20T08:15:00Z) or a Parquet timestamp with a time zone."
            ) from None
        if parsed.zoneless.any() and self.options.assume_tz is None:
            first = int(np.flatnonzero(parsed.zoneless)[0])
            example = raw.iloc[first]
            raise IngestError(
                f"{self.where(column.name)}: {int(parsed.zoneless.sum()):,} timestamps have no time zone "
                f"(e.g. {str(example)!r} in row {first + 1}); the contract expects ISO 8601 with Z or an "
                "offset (2026-11-20T08:15:00Z). If they are local times of one zone, run the ingest with "
                "--assume-tz ZONE (e.g. --assume-tz Europe/Berlin)."
            )
        problems.add(parsed.bad, f"{column.name}: not an ISO 8601 timestamp with a zone")
        return parsed.values, parsed.values.isna().to_numpy() & ~parsed.bad

    def booleans(self, column: Column, raw: pd.Series, problems: _Problems) -> tuple[pd.Series, np.ndarray]:
        values, bad = contract.parse_booleans(raw)
        problems.add(bad.to_numpy(), f"{column.name}: not a boolean ({_BOOLEAN_HELP})")
        return values, (values.isna() & ~bad).to_numpy()

    def numbers(self, column: Column, raw: pd.Series, problems: _Problems) -> tuple[pd.Series, np.ndarray]:
        values, bad, text = _parse_numbers(raw, self.options.decimal_comma)
        problems.add(bad, f"{column.name}: not a number")
        if bad.any() and text is not None and not self.options.decimal_comma:
            commas = int(_mask(text[bad].str.contains(_DECIMAL_COMMA, regex=True)).sum())
            if commas:
                self.warnings.append(
                    f"{self.where(column.name)}: {commas:,} values like {text[bad].iloc[0]!r} look like "
                    "decimal commas; if the export uses them, run the ingest with --decimal-comma"
                )
        array = values.to_numpy()
        if column.kind == Kind.INT:
            problems.add(np.isfinite(array) & (array != np.floor(array)), f"{column.name}: not a whole number")
        outside = np.zeros(len(array), dtype=bool)
        with np.errstate(invalid="ignore"):
            if column.low is not None:
                outside |= array < column.low if column.low_inclusive else array <= column.low
            if column.high is not None:
                outside |= array > column.high if column.high_inclusive else array >= column.high
        problems.add(outside, f"{column.name}: outside {column.bounds_text()}")
        return values, values.isna().to_numpy() & ~bad

    def choices(self, column: Column, raw: pd.Series, problems: _Problems) -> tuple[pd.Series, np.ndarray]:
        text = _text(raw)
        codes, uniques = pd.factorize(text)
        lookup = np.array([contract.canonical_choice(column, str(word)) for word in uniques] + [None], dtype=object)
        values = pd.Series(lookup[codes], index=raw.index, dtype=object)
        invalid = text.notna().to_numpy() & values.isna().to_numpy()
        problems.add(invalid, f"{column.name}: not {contract.choice_text(column)}")
        return values, text.isna().to_numpy()

    def zones(self, column: Column, raw: pd.Series, problems: _Problems) -> tuple[pd.Series, np.ndarray]:
        text = _text(raw)
        names = timezones.canonical_zone_names(text)
        unknown = text.notna().to_numpy() & names.isna().to_numpy()
        if unknown.any():
            self.unknown_zone_names += int(unknown.sum())
            examples = ", ".join(repr(v) for v in text[unknown].unique()[:3])
            self.warnings.append(
                f"{self.where(column.name)}: {int(unknown.sum()):,} names zoneinfo does not know "
                f"(e.g. {examples}) were treated as missing and inferred"
            )
        return names, names.isna().to_numpy()

    def countries(self, column: Column, raw: pd.Series, problems: _Problems) -> tuple[pd.Series, np.ndarray]:
        text = _text(raw).str.upper()
        codes, uniques = pd.factorize(text)
        known = timezones.iso_countries()
        canonical = [contract.COUNTRY_ALIASES.get(str(code), str(code)) for code in uniques]
        lookup = np.array([code if code in known else None for code in canonical] + [None], dtype=object)
        values = pd.Series(lookup[codes], index=raw.index, dtype=object)
        unknown = text.notna().to_numpy() & values.isna().to_numpy()
        if unknown.any():
            examples = ", ".join(repr(v) for v in text[unknown].unique()[:3])
            self.warnings.append(
                f"{self.where(column.name)}: {int(unknown.sum()):,} values are not ISO 3166-1 alpha-2 codes "
                f"(e.g. {examples}) and were treated as missing"
            )
        return values, values.isna().to_numpy()

    def interests(self, column: Column, raw: pd.Series, problems: _Problems) -> tuple[pd.Series, np.ndarray]:
        text = _text(raw).str.replace(r"\s*\|\s*", "|", regex=True).str.replace(r"\|{2,}", "|", regex=True)
        text = text.str.strip("|").fillna("")
        return _objects(text), (text == "").to_numpy()

    def attribute(self, raw: pd.Series) -> pd.Series:
        """``attr_*``: float64 when every value is a number, else text."""
        numbers, bad, text = _parse_numbers(raw, self.options.decimal_comma)
        if text is None or not bad.any():
            return numbers
        return _objects(_text(raw))


def _quarantine_rows(frame: pd.DataFrame, bad: np.ndarray, reasons: np.ndarray, label: str) -> pd.DataFrame:
    rows = frame.loc[bad]
    quarantined = pd.DataFrame(
        {str(name): _objects(rows[name].astype(STRING)) for name in rows.columns}, index=rows.index
    )
    quarantined["_reason"] = reasons
    quarantined["_file"] = label
    quarantined["_row"] = (np.flatnonzero(bad) + 1).astype(object)
    return quarantined.reset_index(drop=True)


def _fill_event_ids(table: Table, valid: pd.DataFrame) -> pd.Series:
    """``event_id``, with ``h-`` + SHA-1 of the row's other contract columns where it is missing."""
    ids = valid[table.key].astype(object)
    missing = ids.isna().to_numpy()
    if not missing.any():
        return ids
    rows = valid.loc[missing]
    parts = [_hash_text(rows[name]) for name in table.column_names if name != table.key]
    joined = parts[0].str.cat(parts[1:], sep="\x1f")
    hashed = [contract.HASHED_EVENT_ID_PREFIX + hashlib.sha1(text.encode()).hexdigest() for text in joined]
    ids = ids.copy()
    ids[missing] = hashed
    return ids


def _hash_text(values: pd.Series) -> pd.Series:
    """A column as text for the event-id hash: the same value always gives the same text."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        micros = pd.Series(values.array.asi8, index=values.index).astype(str)
        return micros.where(values.notna(), "").astype(object)
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.map({True: "true", False: "false"}).fillna("").astype(object)
    if pd.api.types.is_float_dtype(values.dtype):
        return values.astype(str).where(values.notna(), "").astype(object)
    return values.fillna("").astype(str)


# --- one table's export -----------------------------------------------------------------------------------
@dataclass
class _Batch:
    table: Table
    files: list[str]
    valid: pd.DataFrame
    bad: pd.DataFrame
    reasons: Counter[str]
    rows_read: int
    currencies: dict[str, set[str]]
    unknown_zone_names: int


def _read_table(source: _Source, options: _Options, warnings: list[str], progress: _ProgressBars) -> _Batch:
    table = contract.TABLES[source.table]
    checked: list[_Checked] = []
    currencies: dict[str, set[str]] = {}
    for path in source.files:
        label = source.label(path)
        read = _read_csv(path, label, options) if _format_of(path) == "csv" else _read_parquet(path, label)
        progress.advance(table.name)
        read.frame = _canonical_columns(table, read.frame, label, warnings)
        result = _FileChecker(table, label, options, warnings).check(read)
        checked.append(result)
        if result.currencies:
            currencies[label] = result.currencies
        progress.advance(table.name)
    valid = _concat([c.valid for c in checked])
    if table.attributes:
        valid = _unify_attributes(valid)
    missing_profiling = sum(c.missing_profiling for c in checked)
    if missing_profiling:
        filled = {None: "denied", True: "granted", False: "denied"}[options.profiling_consent]
        warnings.append(
            f"customers: {missing_profiling:,} rows have no consent_profiling value; read as {filled}"
            + ("" if options.profiling_consent is not None else " (the safe choice; pass --profiling-consent)")
        )
    return _Batch(
        table=table,
        files=[source.label(p) for p in source.files],
        valid=valid,
        bad=_concat([c.bad for c in checked]),
        reasons=sum((c.reasons for c in checked), Counter()),
        rows_read=sum(c.rows for c in checked),
        currencies=currencies,
        unknown_zone_names=sum(c.unknown_zone_names for c in checked),
    )


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame()
    if len(frames) == 1:
        return frames[0]
    non_empty = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(non_empty, ignore_index=True)


def _unify_attributes(frame: pd.DataFrame) -> pd.DataFrame:
    """An ``attr_*`` column stays float64 when every value is a number; else every value becomes text."""
    for name in frame.columns:
        if name.startswith(contract.ATTRIBUTE_PREFIX) and frame[name].dtype == object:
            values = frame[name]
            floats = values.map(lambda v: isinstance(v, float), na_action="ignore").fillna(False).astype(bool)
            if floats.any():
                values = values.copy()
                values[floats] = values[floats].map(_format_number)
            frame[name] = values
    return frame


# --- merging with the raw store ---------------------------------------------------------------------------
@dataclass
class _Merged:
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


def _merge(batch: _Batch, stored: pd.DataFrame | None) -> _Merged:
    table = batch.table
    new = _raw_frame(table, batch.valid)
    merged = (_merge_events if table.is_event else _merge_entities)(table, new, stored)
    if table.attributes:
        merged.frame = _raw_frame(table, _unify_attributes(merged.frame))
    return merged


def _merge_events(table: Table, new: pd.DataFrame, stored: pd.DataFrame | None) -> _Merged:
    key = table.key
    repeated = new[key].duplicated(keep="first").to_numpy()
    new = new.loc[~repeated]
    already = new[key].isin(stored[key]).to_numpy() if stored is not None else np.zeros(len(new), dtype=bool)
    added = new.loc[~already]
    duplicates = int(repeated.sum() + already.sum())
    if stored is not None and added.empty:
        return _Merged(stored, duplicates, 0, 0, pd.Index([]))
    frame = _concat([stored, added]) if stored is not None else added
    return _Merged(_sort_events(frame, key), duplicates, len(added), 0, pd.Index([]))


def _sort_events(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Events in time order, ties by id: the same rows always give the same file."""
    keys = pa.table(
        {
            "time": pa.array(frame["occurred_at"].array.asi8),
            "id": pa.array(frame[key].to_numpy(dtype=object), type=pa.string()),
        }
    )
    order = pc.sort_indices(keys, sort_keys=[("time", "ascending"), ("id", "ascending")])
    return frame.take(order.to_numpy()).reset_index(drop=True)


def _merge_entities(table: Table, new: pd.DataFrame, stored: pd.DataFrame | None) -> _Merged:
    """The later row wins: later in the export, and the export is later than the store."""
    key = table.key
    if table.name == "customers":
        combined = _concat([stored, new]) if stored is not None else new
        combined["_order"] = np.arange(len(combined))
        combined = combined.sort_values(["updated_at", "_order"], na_position="first", kind="stable")
        winners = combined.drop_duplicates(key, keep="last").drop(columns="_order")
        stored_count = 0 if stored is None else len(stored)
        from_export = winners.index.to_numpy() >= stored_count
    else:
        latest = new.drop_duplicates(key, keep="last")
        kept = stored.loc[~stored[key].isin(latest[key])] if stored is not None else latest.iloc[:0]
        winners = _concat([kept, latest])
        from_export = np.arange(len(winners)) >= len(kept)
    export_keys = pd.Index(winners.loc[from_export, key])
    frame = winners.sort_values(key, kind="stable", ignore_index=True)
    added = int((~export_keys.isin(stored[key])).sum()) if stored is not None else len(export_keys)
    return _Merged(frame, len(new) - len(export_keys), added, len(export_keys) - added, export_keys)


def _count_unchanged(merged: _Merged, key: str, stored: pd.DataFrame | None) -> None:
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


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    if a.shape != b.shape or list(a.columns) != list(b.columns):
        return False
    return bool(_rows_equal(a.reset_index(drop=True), b.reset_index(drop=True)).all())


# --- what the ingest derives --------------------------------------------------------------------------------
def _activity(email_events: pd.DataFrame | None, site_events: pd.DataFrame | None) -> pd.DataFrame:
    """Human activity in UTC: site sessions, and opens and clicks not flagged as machine opens."""
    parts = []
    if email_events is not None:
        human = email_events["event"].isin(["open", "click"]) & ~email_events["machine_open"].fillna(False)
        parts.append(email_events.loc[human, ["customer_id", "occurred_at"]])
    if site_events is not None:
        parts.append(site_events.loc[site_events["event"] == "session_start", ["customer_id", "occurred_at"]])
    if not parts:
        return pd.DataFrame({"customer_id": pd.Series(dtype=object), "occurred_at": pd.Series(dtype=TIMESTAMP)})
    return pd.concat(parts, ignore_index=True)


def _assign_timezones(
    customers: pd.DataFrame, activity: pd.DataFrame, warnings: list[str]
) -> tuple[pd.DataFrame, Counter[str]]:
    customers = customers.copy()
    customers["timezone"] = customers["timezone"].where(~customers["timezone_inferred"], None)
    zones, notes = timezones.infer_timezones(customers, activity)
    warnings.extend(notes)
    customers["timezone"] = zones["timezone"].astype(object)
    customers["timezone_inferred"] = (zones["source"] != timezones.TimezoneSource.GIVEN.value).to_numpy()
    return customers, Counter(zones["source"])


def _impute_margins(offers: pd.DataFrame, offer_events: pd.DataFrame | None, warnings: list[str]) -> pd.DataFrame:
    """A missing margin is the offer's mean observed conversion value, else 1 (contract, offers)."""
    missing = offers["margin"].isna()
    if not missing.any():
        return offers
    observed = pd.Series(dtype=float)
    if offer_events is not None:
        conversions = offer_events.loc[(offer_events["event"] == "converted") & offer_events["value"].notna()]
        observed = conversions.groupby("offer_id")["value"].mean()
    offers = offers.copy()
    from_value = offers["offer_id"].map(observed).where(missing)
    offers["margin"] = offers["margin"].fillna(from_value).fillna(1.0)
    warnings.append(
        f"offers: {int(missing.sum()):,} offers have no margin; {int(from_value.notna().sum()):,} took "
        f"their mean observed conversion value, {int((missing & from_value.isna()).sum()):,} took 1"
    )
    return offers


def _span(frame: pd.DataFrame | None, columns: tuple[str, ...]) -> TimeSpan:
    if frame is None or frame.empty or not columns:
        return TimeSpan()
    lows = [frame[c].min() for c in columns]
    highs = [frame[c].max() for c in columns]
    lows = [v for v in lows if pd.notna(v)]
    highs = [v for v in highs if pd.notna(v)]
    if not lows:
        return TimeSpan()
    return TimeSpan(first=min(lows).to_pydatetime(), last=max(highs).to_pydatetime())


def _warn_likely_fraction(batch: _Batch, warnings: list[str]) -> None:
    discounts = batch.valid["discount_pct"].dropna() if "discount_pct" in batch.valid else pd.Series()
    if len(discounts) and discounts.max() <= 1 and discounts.max() > 0:
        warnings.append(
            f"{', '.join(batch.files)}, column discount_pct: every value is at most 1 (largest "
            f"{discounts.max():g}); these look like fractions, but the contract asks for percentages from 0 "
            "to 100: multiply them by 100 upstream if so"
        )


def _check_currency(batches: dict[str, _Batch], previous: str | None) -> str | None:
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


# --- quarantine and report files ---------------------------------------------------------------------------
def _store_quarantine(settings: Settings, table: str, bad: pd.DataFrame, ingested_at: datetime) -> None:
    """Append bad rows to the table's quarantine; a row already there (same values, reason) stays once."""
    if bad.empty:
        return
    path = settings.quarantine_dir / f"{table}.parquet"
    bad = bad.assign(_ingested_at=pd.Timestamp(ingested_at).as_unit("us"))
    stored = pd.read_parquet(path) if path.exists() else None
    combined = _concat([stored, bad]) if stored is not None else bad
    meta = ("_file", "_row", "_ingested_at")
    for name in combined.columns:
        if name not in meta:
            combined[name] = combined[name].astype(object).where(combined[name].notna(), None)
    identity = [c for c in combined.columns if c not in meta]
    combined = combined.loc[~combined.duplicated(identity, keep="first")].reset_index(drop=True)
    if stored is not None and len(combined) == len(stored):
        return
    combined["_row"] = combined["_row"].astype("Int64")
    raw.write_parquet_atomic(combined, path)


def _previous_currency(settings: Settings) -> str | None:
    latest = settings.reports_dir / "ingest" / "latest.json"
    if not latest.exists():
        return None
    try:
        return IngestReport.model_validate_json(latest.read_text(encoding="utf-8")).currency
    except ValueError:
        return None


def _write_report(settings: Settings, report: IngestReport) -> None:
    folder = settings.reports_dir / "ingest"
    stamp = report.started_at.strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"{stamp}.json"
    report.report_file = str(path)
    text = report.model_dump_json(indent=2)
    raw.write_text_atomic(text, path)
    raw.write_text_atomic(text, folder / "latest.json")


# --- progress ----------------------------------------------------------------------------------------------
class _ProgressBars:
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
def _progress_bars(enabled: bool) -> Iterator[_ProgressBars]:
    if not enabled:
        yield _ProgressBars(None)
        return
    progress = Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    with progress:
        yield _ProgressBars(progress)


# --- the ingest --------------------------------------------------------------------------------------------
def ingest(
    data_dir: Path,
    settings: Settings,
    *,
    assume_tz: str | None = None,
    profiling_consent: Literal["granted", "denied"] | None = None,
    csv_delimiter: str | None = None,
    decimal_comma: bool = False,
    as_of: datetime | pd.Timestamp | str | None = None,
    progress: bool = True,
) -> IngestReport:
    """Validate the contract tables in ``data_dir`` and merge them into the raw store of ``settings``.

    Raises ``IngestError`` for whole-file problems (before anything is written). Bad rows are quarantined.
    The report is returned, and written to ``settings.reports_dir / "ingest"`` (``<time>.json`` and
    ``latest.json``). ``as_of`` is when the export was taken (with a time zone; not before any of its events);
    it, or without it the data's end, is recorded with the raw store (``sendwise.asof``).
    """
    clock = time.perf_counter()
    started_at = datetime.now(UTC)
    data_dir = Path(data_dir).expanduser().resolve()
    options = _check_options(assume_tz, profiling_consent, csv_delimiter, decimal_comma)
    try:
        given_as_of = None if as_of is None else asof.as_timestamp(as_of)
    except asof.AsOfError as error:
        raise IngestError(str(error)) from error
    warnings: list[str] = []
    sources = _discover(data_dir, warnings)

    with _progress_bars(progress) as bars:
        for name, source in sources.items():
            bars.add(name, 2 * len(source.files) + 2)
        batches = {name: _read_table(source, options, warnings, bars) for name, source in sources.items()}
        currency = _check_currency(batches, _previous_currency(settings))
        if given_as_of is not None:
            _check_export_as_of(given_as_of, batches)
        if "offers" in batches:
            _warn_likely_fraction(batches["offers"], warnings)

        stored = {name: raw.load_table(settings, name) for name in contract.TABLES}
        merges: dict[str, _Merged] = {}
        for name, batch in batches.items():
            merges[name] = _merge(batch, stored[name])
            bars.advance(name)
        final = {name: merges[name].frame if name in merges else stored[name] for name in contract.TABLES}
        activity = _activity(final["email_events"], final["site_events"])
        merges["customers"].frame, zone_sources = _assign_timezones(merges["customers"].frame, activity, warnings)
        if "offers" in merges:
            merges["offers"].frame = _impute_margins(merges["offers"].frame, final["offer_events"], warnings)
        final = {name: merges[name].frame if name in merges else stored[name] for name in contract.TABLES}

        for name, merged in merges.items():
            table = contract.TABLES[name]
            if table.is_event:
                changed = merged.added > 0
            else:
                _count_unchanged(merged, table.key, stored[name])
                changed = stored[name] is None or not _frames_equal(merged.frame, stored[name])
            if changed:
                raw.write_table(settings, name, merged.frame)
            _store_quarantine(settings, name, batches[name].bad, started_at)
            bars.advance(name)
        export_latest = asof.latest_of(
            batches[name].valid.get("occurred_at") for name in asof.EVENT_TABLES if name in batches
        )
        store_latest = asof.latest_of(
            frame["occurred_at"] for name in asof.EVENT_TABLES if (frame := final[name]) is not None
        )
        as_of_used = given_as_of if given_as_of is not None else asof.data_end(store_latest)
        asof.record_as_of(settings, as_of_used, given_as_of is not None, data_dir, export_latest)

    report = IngestReport(
        data_dir=str(data_dir),
        home=str(settings.home),
        started_at=started_at,
        seconds=0.0,
        options=IngestOptions(
            assume_tz=assume_tz,
            profiling_consent=profiling_consent,
            csv_delimiter=csv_delimiter,
            decimal_comma=decimal_comma,
            as_of=None if given_as_of is None else given_as_of.to_pydatetime(),
        ),
        currency=currency,
        tables={name: _table_report(batches[name], merges[name], final) for name in batches},
        skipped_tables=[name for name in contract.TABLES if name not in batches],
        timezones=TimezoneCoverage(
            given=zone_sources.get("given", 0),
            country=zone_sources.get("country", 0),
            activity=zone_sources.get("activity", 0),
            unknown=zone_sources.get("unknown", 0),
            unknown_names=batches["customers"].unknown_zone_names,
        ),
        as_of=as_of_used.to_pydatetime(),
        as_of_given=given_as_of is not None,
        warnings=warnings,
    )
    _add_open_facts(report, final["email_events"])
    report.seconds = round(time.perf_counter() - clock, 3)
    _write_report(settings, report)
    return report


def _check_export_as_of(as_of: pd.Timestamp, batches: dict[str, _Batch]) -> None:
    """An export cannot hold events after it was taken: an as-of before any of its events is an error that
    names the as-of, the latest event and the files it is in (nothing is written)."""
    late = []
    for name in asof.EVENT_TABLES:
        batch = batches.get(name)
        if batch is None or "occurred_at" not in batch.valid or batch.valid.empty:
            continue
        times = batch.valid["occurred_at"]
        after = int((times > as_of).sum())
        if after:
            late.append((times.max(), name, after, ", ".join(batch.files)))
    if not late:
        return
    latest, name, after, files = max(late)
    raise IngestError(
        f"--as-of {asof.text(as_of)} is before the latest event of this export: {files}, column occurred_at, "
        f"has {after:,} events after it, the latest at {asof.text(latest)}. An export cannot hold events after "
        "it was taken: give the time the export was taken (check its time zone), or leave --as-of out to use "
        "the data's end. Nothing was ingested."
    )


def _table_report(batch: _Batch, merged: _Merged, final: dict[str, pd.DataFrame | None]) -> TableReport:
    table = batch.table
    quarantined = len(batch.bad)
    report = TableReport(
        table=table.name,
        files=batch.files,
        rows_read=batch.rows_read,
        accepted=batch.rows_read - quarantined - merged.duplicates,
        duplicates=merged.duplicates,
        quarantined=quarantined,
        top_reasons=[ReasonCount(reason=r, rows=n) for r, n in batch.reasons.most_common(TOP_REASONS)],
        added=merged.added,
        updated=merged.updated,
        rows_in_store=len(merged.frame),
        span=_span(batch.valid, table.time_columns),
        store_span=_span(merged.frame, table.time_columns),
    )
    customers = final["customers"]
    if table.is_event and customers is not None:
        unknown = ~merged.frame["customer_id"].isin(customers["customer_id"])
        report.unknown_customer_events = int(unknown.sum())
        report.unknown_customers = int(merged.frame.loc[unknown, "customer_id"].nunique())
    return report


def _add_open_facts(report: IngestReport, email_events: pd.DataFrame | None) -> None:
    if email_events is None:
        return
    opens = email_events["event"] == "open"
    report.opens = int(opens.sum())
    report.machine_opens = int((opens & email_events["machine_open"].fillna(False)).sum())
    report.machine_open_share = report.machine_opens / report.opens if report.opens else None
