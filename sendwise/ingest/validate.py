"""Validating a file's rows against the contract: valid rows in the raw store's types, bad rows quarantined.

Every rule comes from `sendwise.contract`. A bad value puts its row in the quarantine with reasons that name
the column and what was expected (the quarantine keeps the file and the row); a whole-file problem (a
required column missing, time stamps without a zone and no `--assume-tz`) raises `IngestError`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

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


class Problems:
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


class FileChecker:
    """Applies the contract to the columns of one file."""

    def __init__(self, table: Table, label: str, options: Options, warnings: list[str]) -> None:
        self.table = table
        self.label = label
        self.options = options
        self.warnings = warnings
        self.unknown_zone_names = 0

    def kept(self, text: pd.Series) -> pd.Series:
        """Text as the valid rows hold it: an event table's as Arrow strings (its ids are most of an export's
        memory, and far smaller so than as Python objects; they are written as the raw store's text all the
        same, ``sendwise.ingest.merge.raw_arrow``), the other tables' as Python ``str`` or None."""
        return text if self.table.is_event else as_objects(text)

    def where(self, column: str) -> str:
        return f"{self.label}, column {column}"

    def check(self, read: Read) -> Checked:
        frame = read.frame
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
        quarantined = _quarantine_rows(frame, bad, problems.reasons(bad), self.label)
        reasons = problems.counts()
        if read.malformed:
            reason = f"row: not {read.expected_fields} fields like the header"
            malformed = pd.DataFrame(
                {"_text": read.malformed, "_reason": reason, "_file": self.label, "_row": None}, dtype=object
            )
            quarantined = pd.concat([quarantined, malformed], ignore_index=True)
            reasons[reason] += len(read.malformed)
        return Checked(
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
            self.warnings.append(
                f"{self.where(column.name)}: {int(plain.sum()):,} links over plain http (e.g. "
                f"{text[plain].iloc[0]!r}) were accepted; {column.http_warning}"
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

    def booleans(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        values, bad = contract.parse_booleans(raw)
        problems.add(bad.to_numpy(), f"{column.name}: not a boolean ({_BOOLEAN_HELP})")
        return values, (values.isna() & ~bad).to_numpy()

    def numbers(self, column: Column, raw: pd.Series, problems: Problems) -> tuple[pd.Series, np.ndarray]:
        values, bad, text = parse_numbers(raw, self.options.decimal_comma)
        problems.add(bad, f"{column.name}: not a number")
        if bad.any() and text is not None and not self.options.decimal_comma:
            commas = int(as_mask(text[bad].str.contains(DECIMAL_COMMA, regex=True)).sum())
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
            examples = ", ".join(repr(v) for v in text[unknown].unique()[:3])
            self.warnings.append(
                f"{self.where(column.name)}: {int(unknown.sum()):,} names zoneinfo does not know "
                f"(e.g. {examples}) were treated as missing and inferred"
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
            examples = ", ".join(repr(v) for v in text[unknown].unique()[:3])
            self.warnings.append(
                f"{self.where(column.name)}: {int(unknown.sum()):,} values are not ISO 3166-1 alpha-2 codes "
                f"(e.g. {examples}) and were treated as missing"
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


def _quarantine_rows(frame: pd.DataFrame, bad: np.ndarray, reasons: np.ndarray, label: str) -> pd.DataFrame:
    rows = frame.loc[bad]
    quarantined = pd.DataFrame(
        {str(name): as_objects(rows[name].astype(STRING)) for name in rows.columns}, index=rows.index
    )
    quarantined["_reason"] = reasons
    quarantined["_file"] = label
    quarantined["_row"] = (np.flatnonzero(bad) + 1).astype(object)
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
