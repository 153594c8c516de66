"""Validating a file's rows against the contract: valid rows in the raw store's types, bad rows quarantined.

Every rule comes from `sendwise.contract`. A bad value puts its row in the quarantine with reasons that name
the column and what was expected (the quarantine keeps the file and the row); a whole-file problem (a
required column missing, time stamps without a zone and no `--assume-tz`) raises `IngestError`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sendwise import contract, timezones
from sendwise.contract import Column, Kind, Table
from sendwise.ingest.errors import IngestError
from sendwise.ingest.options import Options
from sendwise.ingest.parse import (
    DECIMAL_COMMA,
    STRING,
    TIMESTAMP,
    as_free_text,
    as_mask,
    as_objects,
    as_text,
    parse_numbers,
    parse_timestamps,
)
from sendwise.ingest.read import Read

_BOOLEAN_HELP = "true/false, 1/0, yes/no, y/n, t/f"


@dataclass
class Checked:
    """A file's rows split into valid (raw store dtypes) and quarantined (original text with the reason)."""

    valid: pd.DataFrame
    bad: pd.DataFrame
    reasons: Counter[str]
    rows: int
    currencies: set[str]
    unknown_zone_names: int = 0
    missing_profiling: int = 0
    reason_order: dict[str, int] = field(default_factory=dict)
    """Where each reason comes in the checks (every chunk runs the same checks in the same order): the chunks'
    reasons ordered by it are in the order the whole file's would be."""


class Problems:
    """The reasons each row breaks the contract, collected column by column."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.items: list[tuple[np.ndarray, str]] = []
        self.order: dict[str, int] = {}
        self.calls = 0

    def add(self, mask: np.ndarray, reason: str) -> None:
        self.calls += 1
        if mask.any():
            self.items.append((mask, reason))
            self.order.setdefault(reason, self.calls)

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


@dataclass
class Note:
    """A warning about one column of a file, counted over all the file's chunks and given once, at its end."""

    position: int  # the column's place in the table: warnings come in column order
    say: Callable[[int, list[object]], str]
    count: int = 0
    examples: list[object] = field(default_factory=list)


@dataclass
class Zoneless:
    """Time stamps without a zone in one column of a file: how many, and the first (its text and row)."""

    column: str
    count: int
    example: object
    row: int


class FileChecker:
    """Applies the contract to the columns of one file, the whole file at once (``check``) or chunk by chunk
    (``check_chunk`` for each, then ``finish``): rows are numbered in the file, and warnings and the error of
    time stamps without a zone count the whole file, as if it had been checked at once."""

    def __init__(self, table: Table, label: str, options: Options, warnings: list[str]) -> None:
        self.table = table
        self.label = label
        self.options = options
        self.warnings = warnings
        self.unknown_zone_names = 0
        self.rows_before = 0
        """Rows of the file in the chunks checked before this one."""
        self.notes: dict[tuple[str, str], Note] = {}
        self.zoneless: Zoneless | None = None

    def kept(self, text: pd.Series) -> pd.Series:
        """Text as the valid rows hold it: an event table's as Arrow strings (its ids are most of an export's
        memory, and far smaller so than as Python objects; they are written as the raw store's text all the
        same, ``sendwise.ingest.merge.raw_arrow``), the other tables' as Python ``str`` or None."""
        return text if self.table.is_event else as_objects(text)

    def where(self, column: str) -> str:
        return f"{self.label}, column {column}"

    def check(self, read: Read) -> Checked:
        """The whole file at once: its rows checked, then its warnings given (``finish``)."""
        checked = self.check_chunk(read)
        malformed = self.finish(read.malformed, read.expected_fields)
        if not malformed.empty:
            checked.bad = pd.concat([checked.bad, malformed], ignore_index=True)
            checked.reasons[str(malformed["_reason"].iloc[0])] += len(malformed)
        return checked

    def check_chunk(self, read: Read) -> Checked:
        """The rows of a chunk of the file checked (the lines it could not split are counted in ``rows``, and
        quarantined by ``finish``)."""
        try:
            return self._check_chunk(read)
        except IngestError:
            if self.zoneless is not None:  # found first, in an earlier column: the whole file's error
                raise self.zoneless_error() from None
            raise
        finally:
            self.rows_before += len(read.frame)

    def finish(self, malformed: list[str], expected_fields: int) -> pd.DataFrame:
        """After the file's last chunk: the error of time stamps without a zone, else the file's warnings, and
        the quarantine rows of the lines that could not be split into the header's fields."""
        if self.zoneless is not None:
            raise self.zoneless_error()
        for note in sorted(self.notes.values(), key=lambda n: n.position):
            if note.count:
                self.warnings.append(note.say(note.count, note.examples))
        self.notes.clear()
        reason = f"row: not {expected_fields} fields like the header"
        return pd.DataFrame({"_text": malformed, "_reason": reason, "_file": self.label, "_row": None}, dtype=object)

    def note(
        self,
        column: str,
        kind: str,
        count: int,
        examples: list[object],
        limit: int,
        say: Callable[[int, list[object]], str],
    ) -> None:
        """Count a warning's cases in this chunk, keeping the file's first ``limit`` distinct examples."""
        position = self.table.column_names.index(column) if column in self.table.column_names else len(self.notes)
        note = self.notes.setdefault((column, kind), Note(position, say))
        note.count += count
        for example in examples:
            if len(note.examples) >= limit:
                break
            if example not in note.examples:
                note.examples.append(example)

    def zoneless_error(self) -> IngestError:
        found = self.zoneless
        assert found is not None
        return IngestError(
            f"{self.where(found.column)}: {found.count:,} timestamps have no time zone "
            f"(e.g. {str(found.example)!r} in row {found.row}); the contract expects ISO 8601 with Z or an "
            "offset (2026-11-20T08:15:00Z). If they are local times of one zone, run the ingest with "
            "--assume-tz ZONE (e.g. --assume-tz Europe/Berlin)."
        )

    def _check_chunk(self, read: Read) -> Checked:
        frame = read.frame
        zone_names_before = self.unknown_zone_names
        problems = Problems(len(frame))
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
            currencies = set(as_text(frame[contract.CURRENCY_COLUMN]).str.upper().dropna().unique())
        bad = problems.any()
        valid = pd.DataFrame(out, index=frame.index).loc[~bad].reset_index(drop=True)
        if self.table.is_event:
            valid[self.table.key] = _fill_event_ids(self.table, valid)
        quarantined = _quarantine_rows(frame, bad, problems.reasons(bad), self.label, self.rows_before)
        return Checked(
            valid=valid,
            bad=quarantined,
            reasons=problems.counts(),
            reason_order=problems.order,
            rows=len(frame) + len(read.malformed),
            currencies=currencies,
            unknown_zone_names=self.unknown_zone_names - zone_names_before,
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

    def parse(self, column: Column, raw: pd.Series, problems: Problems) -> pd.Series:
        parser = {
            Kind.ID: self.ids,
            Kind.TEXT: self.texts,
            Kind.FREE_TEXT: self.free_texts,
            Kind.LINK: self.links,
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

    def ids(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        text = as_text(raw)
        problems.add(
            as_mask(text.str.len() > contract.MAX_ID_LENGTH),
            f"{column.name}: longer than {contract.MAX_ID_LENGTH} characters",
        )
        if column.name == "customer_id":
            problems.add(
                contract.looks_like_email(text).to_numpy(),
                "customer_id: looks like an email address (a direct identifier; hash it upstream)",
            )
        return self.kept(text), text.isna().to_numpy()

    def texts(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        text = as_text(raw)
        return self.kept(text), text.isna().to_numpy()

    def free_texts(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        text = as_free_text(raw)
        return self.kept(text), text.isna().to_numpy()

    def links(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        text = as_text(raw)
        codes, uniques = pd.factorize(text)
        words = [str(word) for word in uniques]
        schemes = np.array([contract.link_scheme(word) for word in words] + [None], dtype=object)[codes]
        broken = np.array([re.search(contract.LINK_BREAKS, word) is not None for word in words] + [False])[codes]
        invalid = text.notna().to_numpy() & pd.isna(schemes)
        reason = f"{column.name}: not {contract.LINK_TEXT}"
        problems.add(invalid & ~broken, reason)
        problems.add(invalid & broken, f"{reason} (it has whitespace or a control character inside)")
        plain = schemes == "http"
        if column.http_warning and plain.any():
            where, advice = self.where(column.name), column.http_warning
            self.note(
                column.name,
                "http",
                int(plain.sum()),
                [text[plain].iloc[0]],
                1,
                lambda count, examples: (
                    f"{where}: {count:,} links over plain http (e.g. {examples[0]!r}) were accepted; {advice}"
                ),
            )
        return self.kept(text), text.isna().to_numpy()

    def timestamps(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        try:
            parsed = parse_timestamps(raw, self.options.assume_tz)
        except TypeError as error:
            raise IngestError(
                f"{self.where(column.name)}: values of type {error}; expected ISO 8601 text with Z or an "
                "offset (2026-11-20T08:15:00Z) or a Parquet timestamp with a time zone."
            ) from None
        if parsed.zoneless.any() and self.options.assume_tz is None:
            # an error for the whole file (``finish``), counted over all of it
            count = int(parsed.zoneless.sum())
            if self.zoneless is None:
                first = int(np.flatnonzero(parsed.zoneless)[0])
                self.zoneless = Zoneless(column.name, 0, raw.iloc[first], self.rows_before + first + 1)
            if self.zoneless.column == column.name:
                self.zoneless.count += count
        problems.add(parsed.bad, f"{column.name}: not an ISO 8601 timestamp with a zone")
        return parsed.values, parsed.values.isna().to_numpy() & ~parsed.bad

    def booleans(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        values, bad = contract.parse_booleans(raw)
        problems.add(bad.to_numpy(), f"{column.name}: not a boolean ({_BOOLEAN_HELP})")
        return values, (values.isna() & ~bad).to_numpy()

    def numbers(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        values, bad, text = parse_numbers(raw, self.options.decimal_comma)
        problems.add(bad, f"{column.name}: not a number")
        if bad.any() and text is not None and not self.options.decimal_comma:
            commas = int(as_mask(text[bad].str.contains(DECIMAL_COMMA, regex=True)).sum())
            where = self.where(column.name)
            self.note(
                column.name,
                "decimal comma",
                commas,
                [text[bad].iloc[0]],  # the file's first bad value, as the warning shows it
                1,
                lambda count, examples: (
                    f"{where}: {count:,} values like {examples[0]!r} look like decimal commas; if the export "
                    "uses them, run the ingest with --decimal-comma"
                ),
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

    def choices(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        text = as_text(raw)
        codes, uniques = pd.factorize(text)
        lookup = np.array([contract.canonical_choice(column, str(word)) for word in uniques] + [None], dtype=object)
        values = pd.Series(lookup[codes], index=raw.index, dtype=object)
        invalid = text.notna().to_numpy() & values.isna().to_numpy()
        problems.add(invalid, f"{column.name}: not {contract.choice_text(column)}")
        return values, text.isna().to_numpy()

    def zones(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        text = as_text(raw)
        names = timezones.canonical_zone_names(text)
        unknown = text.notna().to_numpy() & names.isna().to_numpy()
        if unknown.any():
            self.unknown_zone_names += int(unknown.sum())
            where = self.where(column.name)
            self.note(
                column.name,
                "zone",
                int(unknown.sum()),
                list(text[unknown].unique()[:3]),
                3,
                lambda count, examples: (
                    f"{where}: {count:,} names zoneinfo does not know (e.g. "
                    f"{', '.join(repr(v) for v in examples)}) were treated as missing and inferred"
                ),
            )
        return names, names.isna().to_numpy()

    def countries(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        text = as_text(raw).str.upper()
        codes, uniques = pd.factorize(text)
        known = timezones.iso_countries()
        canonical = [contract.COUNTRY_ALIASES.get(str(code), str(code)) for code in uniques]
        lookup = np.array([code if code in known else None for code in canonical] + [None], dtype=object)
        values = pd.Series(lookup[codes], index=raw.index, dtype=object)
        unknown = text.notna().to_numpy() & values.isna().to_numpy()
        if unknown.any():
            where = self.where(column.name)
            self.note(
                column.name,
                "country",
                int(unknown.sum()),
                list(text[unknown].unique()[:3]),
                3,
                lambda count, examples: (
                    f"{where}: {count:,} values are not ISO 3166-1 alpha-2 codes (e.g. "
                    f"{', '.join(repr(v) for v in examples)}) and were treated as missing"
                ),
            )
        return values, values.isna().to_numpy()

    def interests(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        text = as_text(raw).str.replace(r"\s*\|\s*", "|", regex=True).str.replace(r"\|{2,}", "|", regex=True)
        text = text.str.strip("|").fillna("")
        return self.kept(text), (text == "").to_numpy()

    def attribute(self, raw: pd.Series) -> pd.Series:
        """``attr_*``: float64 when every value is a number, else text."""
        numbers, bad, text = parse_numbers(raw, self.options.decimal_comma)
        if text is None or not bad.any():
            return numbers
        return as_objects(as_text(raw))


def _quarantine_rows(
    frame: pd.DataFrame, bad: np.ndarray, reasons: np.ndarray, label: str, rows_before: int
) -> pd.DataFrame:
    rows = frame.loc[bad]
    quarantined = pd.DataFrame(
        {str(name): as_objects(rows[name].astype(STRING)) for name in rows.columns}, index=rows.index
    )
    quarantined["_reason"] = reasons
    quarantined["_file"] = label
    quarantined["_row"] = (np.flatnonzero(bad) + rows_before + 1).astype(object)
    return quarantined.reset_index(drop=True)


def _fill_event_ids(table: Table, valid: pd.DataFrame) -> pd.Series:
    """``event_id``, with ``h-`` + SHA-1 of the row's other contract columns where it is missing."""
    ids = valid[table.key]
    missing = ids.isna().to_numpy()
    if not missing.any():
        return ids
    rows = valid.loc[missing]
    parts = [_hash_text(rows[name]) for name in table.column_names if name != table.key]
    joined = parts[0].str.cat(parts[1:], sep="\x1f")
    hashed = [contract.HASHED_EVENT_ID_PREFIX + hashlib.sha1(text.encode()).hexdigest() for text in joined]
    return ids.where(~missing, pd.Series(hashed, index=rows.index, dtype=ids.dtype).reindex(ids.index))


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
