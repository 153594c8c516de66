"""Parsing values: text, numbers (decimal commas, thousands separators) and time stamps (zones, offsets).

Vectorized over whole columns (pandas and Arrow); each parser returns the values and which of them are bad,
and the validation decides what a bad value means for its column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from sendwise import contract

STRING = contract.STRING


TIMESTAMP = pd.DatetimeTZDtype("us", "UTC")


_ZONED = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"


_THOUSANDS = r"^[+-]?\d{1,3}(?:\.\d{3})+(?:,\d*)?$"


DECIMAL_COMMA = r"^[+-]?\d+,\d+$"


def format_number(value: float) -> str:
    """A number as text: whole numbers without a decimal point."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def as_text(raw: pd.Series) -> pd.Series:
    """Values as trimmed pyarrow strings; empty is missing. Numbers from Parquet keep their digits."""
    text = _strings(raw).str.strip()
    return text.mask((text == "").fillna(False))


def as_free_text(raw: pd.Series) -> pd.Series:
    """Values as pyarrow strings exactly as given, not trimmed; empty or only whitespace is missing."""
    text = _strings(raw)
    return text.mask((text.str.strip() == "").fillna(False))


def _strings(raw: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(raw.dtype):
        raw = raw.map({True: "true", False: "false"}, na_action="ignore")
    elif pd.api.types.is_float_dtype(raw.dtype):
        raw = raw.map(format_number, na_action="ignore")
    return raw.astype(STRING)


def as_mask(values: pd.Series) -> np.ndarray:
    """A boolean Series as a numpy mask (missing is False)."""
    return values.fillna(False).to_numpy(dtype=bool)


def as_objects(values: pd.Series) -> pd.Series:
    """Strings as the raw store holds them: Python ``str`` or None (object dtype)."""
    return pd.Series(values.to_numpy(dtype=object, na_value=None), index=values.index, dtype=object)


def parse_numbers(raw: pd.Series, decimal_comma: bool) -> tuple[pd.Series, np.ndarray, pd.Series | None]:
    """Numbers as float64, the mask of values that are not finite numbers, and the text (None if typed)."""
    if pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype):
        numbers = pd.Series(raw.to_numpy(dtype=float, na_value=np.nan), index=raw.index)
        return numbers, ~np.isfinite(numbers.to_numpy()) & raw.notna().to_numpy(), None
    text = as_text(raw)
    if decimal_comma:
        thousands = as_mask(text.str.contains(_THOUSANDS, regex=True))
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
class Timestamps:
    """Time stamps parsed from a column, and which values were not time stamps or had no zone."""

    values: pd.Series  # datetime64[us, UTC]
    bad: np.ndarray  # present but not a timestamp
    zoneless: np.ndarray  # a timestamp without a zone (an error unless assume_tz)
    text: pd.Series | None


def parse_timestamps(raw: pd.Series, assume_tz: str | None) -> Timestamps:
    """UTC time stamps of ISO 8601 text or Parquet time stamps; zoneless ones localized in ``assume_tz`` if given."""
    none = np.zeros(len(raw), dtype=bool)
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return Timestamps(raw.dt.tz_convert("UTC").astype(TIMESTAMP), none, none, None)
    if pd.api.types.is_datetime64_dtype(raw.dtype):
        return _localize(raw, raw.notna().to_numpy(), assume_tz, none, None)
    if pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.is_bool_dtype(raw.dtype):
        raise TypeError(str(raw.dtype))
    text = as_text(raw)
    try:
        parsed = pa.array(text.array).cast(pa.timestamp("us", "UTC"))
        values = parsed.to_pandas().astype(TIMESTAMP)
        values.index = raw.index
        return Timestamps(values, none, none, text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = text.str.replace(r"(\d)z$", r"\1Z", regex=True)
    zoned = as_mask(text.str.contains(_ZONED, regex=True))
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
) -> Timestamps:
    if assume_tz is None or not zoneless.any():
        return Timestamps(pd.Series(pd.NaT, index=wall.index, dtype=TIMESTAMP), bad, zoneless, text)
    # an ambiguous wall time (the hour repeated when clocks go back) is read as the first of the two
    localized = wall.dt.tz_localize(assume_tz, ambiguous=np.ones(len(wall), dtype=bool), nonexistent="shift_forward")
    return Timestamps(localized.dt.tz_convert("UTC").astype(TIMESTAMP), bad, zoneless, text)
