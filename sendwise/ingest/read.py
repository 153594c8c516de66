"""Reading an export: which files hold which table (the contract's "Layout"), and reading CSV and Parquet.

A table is `TABLE.csv`, `TABLE.parquet` or a `TABLE/` folder of parts of one format. CSV is read as text
(the delimiter detected from the header unless given; lines with the wrong number of fields are kept aside
for the quarantine); Parquet keeps its types. Column names are matched to the contract's spelling.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sendwise import contract
from sendwise.contract import Table
from sendwise.ingest.errors import IngestError
from sendwise.ingest.options import Options
from sendwise.ingest.parse import STRING

_SNIFF_BYTES = 1 << 16


@dataclass
class Source:
    """The files of one table, in the order they are read."""

    table: str
    files: list[Path]
    root: Path

    def label(self, path: Path) -> str:
        """The file as messages name it: its path inside the export."""
        return str(path.relative_to(self.root))


def format_of(path: Path) -> str | None:
    """``csv`` or ``parquet`` by the file's suffix, else None."""
    suffix = path.suffix.lower()
    return suffix[1:] if suffix in (".csv", ".parquet") else None


def discover(data_dir: Path, warnings: list[str]) -> dict[str, Source]:
    """The table entries of ``data_dir`` (contract "Layout"); anything else is named in a warning."""
    if not data_dir.is_dir():
        raise IngestError(f"{data_dir}: not a directory. Give the directory that holds the exported tables.")
    entries: dict[str, list[Path]] = {}
    ignored: list[str] = []
    for path in sorted(data_dir.iterdir()):
        name = path.name.lower()
        if path.is_dir() and name in contract.TABLES:
            entries.setdefault(name, []).append(path)
        elif path.is_file() and format_of(path) and path.stem.lower() in contract.TABLES:
            entries.setdefault(path.stem.lower(), []).append(path)
        else:
            ignored.append(path.name + ("/" if path.is_dir() else ""))
    sources: dict[str, Source] = {}
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
            sources[table] = Source(table, [entry], data_dir)
            continue
        parts = sorted(p for p in entry.iterdir() if p.is_file() and format_of(p))
        ignored += [str(p.relative_to(data_dir)) for p in sorted(entry.iterdir()) if p not in parts]
        formats = {fmt for p in parts if (fmt := format_of(p))}
        if len(formats) > 1:
            listing = "; ".join(
                f".{fmt}: " + ", ".join(p.name for p in parts if format_of(p) == fmt) for fmt in sorted(formats)
            )
            raise IngestError(
                f"{entry}/: the parts mix formats ({listing}). A table folder holds parts of one format "
                "(all .parquet or all .csv); move the others out and run the ingest again."
            )
        if not parts:
            warnings.append(f"{entry.name}/ holds no .parquet or .csv parts; table {table} was skipped")
            continue
        sources[table] = Source(table, parts, data_dir)
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


@dataclass
class Read:
    """A file as read: its rows, and for CSV the lines that could not be split into the header's fields."""

    frame: pd.DataFrame  # original columns, renamed to the contract's spelling
    malformed: list[str] = field(default_factory=list)  # CSV lines with the wrong number of fields
    expected_fields: int = 0
    delimiter: str | None = None  # CSV only
    columns: list[str] = field(default_factory=list)  # as the file names them


def _detect_delimiter(header: str) -> str:
    counts = {delimiter: header.count(delimiter) for delimiter in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def read_csv(path: Path, label: str, options: Options) -> Read:
    """A CSV file as text columns (UTF-8, a BOM allowed), its delimiter given or detected from the header."""
    return _whole(read_csv_chunks(path, label, options, None))


def read_parquet(path: Path, label: str) -> Read:
    """A Parquet file with its own types (strings as pyarrow strings)."""
    return _whole(read_parquet_chunks(path, label, None))


def read_chunks(path: Path, label: str, options: Options, rows: int | None) -> Iterator[Read]:
    """The file (CSV or Parquet, by its suffix) in chunks of at most ``rows`` rows (None: the whole file at once).

    A CSV chunk's ``malformed`` lists the lines that could not be split into the header's fields read since the
    chunk before."""
    if format_of(path) == "csv":
        return read_csv_chunks(path, label, options, rows)
    return read_parquet_chunks(path, label, rows)


def _whole(chunks: Iterator[Read]) -> Read:
    """The chunks of a file as one ``Read``."""
    found = list(chunks)
    if len(found) == 1:
        return found[0]
    first = found[0]
    frame = pd.concat([chunk.frame for chunk in found], ignore_index=True)
    malformed = [line for chunk in found for line in chunk.malformed]
    return Read(frame, malformed, first.expected_fields, first.delimiter, first.columns)


def _csv_header(path: Path, label: str, options: Options) -> tuple[str, list[str]]:
    """The delimiter (given or detected) and the column names of a CSV file's header."""
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
    return delimiter, names


def read_csv_chunks(path: Path, label: str, options: Options, rows: int | None) -> Iterator[Read]:
    """A CSV file as text columns in chunks of at most ``rows`` rows (``read_chunks``), read as a stream: the
    memory it takes is that of a chunk, not of the file."""
    delimiter, names = _csv_header(path, label, options)
    malformed: list[str] = []

    def skip(row: pacsv.InvalidRow) -> str:
        malformed.append(row.text or "")
        return "skip"

    def failed(error: pa.ArrowInvalid) -> IngestError:
        if "utf8" in str(error).lower():
            return IngestError(f"{label}: not UTF-8 text ({error}). Export it as UTF-8 (a BOM is fine).")
        return IngestError(f"{label}: not readable as CSV with delimiter {delimiter!r} ({error}).")

    read_options = pacsv.ReadOptions(column_names=names, skip_rows=1)
    parse_options = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=skip)
    convert_options = pacsv.ConvertOptions(
        column_types=dict.fromkeys(names, pa.string()),
        strings_can_be_null=True,
        null_values=[""],
        quoted_strings_can_be_null=True,
    )
    try:
        if rows is None:
            batches: Iterable[pa.RecordBatch] = pacsv.read_csv(
                path, read_options=read_options, parse_options=parse_options, convert_options=convert_options
            ).to_batches()
        else:
            batches = pacsv.open_csv(
                path, read_options=read_options, parse_options=parse_options, convert_options=convert_options
            )
        empty = True
        for table in _cut(batches, rows, pa.schema([(name, pa.string()) for name in names])):
            empty = False
            frame = table.to_pandas(types_mapper={pa.string(): STRING, pa.large_string(): STRING}.get)
            yield Read(frame, list(malformed), len(names), delimiter, names)
            malformed.clear()
        if empty or malformed:
            frame = pa.table({name: pa.array([], pa.string()) for name in names}).to_pandas(
                types_mapper={pa.string(): STRING}.get
            )
            yield Read(frame, list(malformed), len(names), delimiter, names)
    except pa.ArrowInvalid as error:
        raise failed(error) from error


def _cut(batches: Iterable[pa.RecordBatch], rows: int | None, schema: pa.Schema) -> Iterator[pa.Table]:
    """The batches as tables of at most ``rows`` rows (None: all of them as one table)."""
    if rows is None:
        yield pa.Table.from_batches(list(batches), schema=schema)
        return
    for batch in batches:
        for start in range(0, batch.num_rows, rows):
            yield pa.Table.from_batches([batch.slice(start, rows)])


def read_parquet_chunks(path: Path, label: str, rows: int | None) -> Iterator[Read]:
    """A Parquet file with its own types (strings as pyarrow strings) in chunks of at most ``rows`` rows."""
    try:
        file = pq.ParquetFile(path)
        if rows is None:
            tables: Iterable[pa.Table] = [file.read()]
        else:
            tables = (pa.Table.from_batches([batch]) for batch in file.iter_batches(batch_size=rows))
        empty = True
        for table in tables:
            empty = False
            yield _parquet_read(table, file.schema_arrow)
        if empty:
            yield _parquet_read(file.schema_arrow.empty_table(), file.schema_arrow)
    except (pa.ArrowException, OSError) as error:
        raise IngestError(f"{label}: not a readable Parquet file ({error}).") from error


def _parquet_read(table: pa.Table, schema: pa.Schema) -> Read:
    table = table.replace_schema_metadata(schema.metadata)  # the file's pandas metadata (its index) applies
    frame = table.to_pandas(types_mapper={pa.string(): STRING, pa.large_string(): STRING}.get)
    return Read(frame.reset_index(drop=True), columns=[str(c) for c in frame.columns])


def canonical_columns(table: Table, frame: pd.DataFrame, label: str, warnings: list[str]) -> pd.DataFrame:
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
