"""Local hour and weekday of UTC times in each row's own time zone, vectorized by zone."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd


def local_hour_weekday(times: pd.Series, zones: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(hour 0-23, weekday 0=Monday) of each UTC time in the zone beside it; unknown zones count as UTC.

    Converted once per zone; when every row has the same time (a campaign's window start), once per zone and
    not per row."""
    stamps = pd.DatetimeIndex(pd.to_datetime(pd.Series(times).reset_index(drop=True), utc=True))
    if len(stamps) > 0 and bool((stamps.asi8 == stamps.asi8[0]).all()):
        return clock_at(stamps[0], zones.to_numpy())
    codes, names = pd.factorize(pd.Series(zones.to_numpy(), dtype=object).fillna("UTC"), sort=False)
    hours = np.empty(len(stamps), dtype=np.int8)
    weekdays = np.empty(len(stamps), dtype=np.int8)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    for k, zone in enumerate(names):
        positions = order[bounds[k] : bounds[k + 1]]
        part = stamps[positions]
        try:
            local = part.tz_convert(str(zone))
        except (KeyError, ValueError):
            local = part
        hours[positions] = local.hour.to_numpy()
        weekdays[positions] = local.dayofweek.to_numpy()
    return hours, weekdays


FEW_ROWS = 256
"""Up to this many rows, `clock_at` looks each row's zone up; above it, it converts each distinct zone once."""


def clock_at(instant: pd.Timestamp, zones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hour, weekday) of one UTC instant in each row's zone: what `local_hour_weekday` gives when every row has
    that time, without a Series of times to build (a campaign's window start, asked for a few recipients)."""
    if len(zones) > FEW_ROWS:  # each zone once
        codes, names = pd.factorize(pd.Series(zones, dtype=object).fillna("UTC"), sort=False)
        clocks = np.array([_clock_at(instant, str(zone)) for zone in names], dtype=np.int8).reshape(-1, 2)
        return clocks[codes, 0], clocks[codes, 1]
    hours = np.empty(len(zones), dtype=np.int8)
    weekdays = np.empty(len(zones), dtype=np.int8)
    for i, zone in enumerate(zones):
        hours[i], weekdays[i] = _clock_at(instant, zone if isinstance(zone, str) else "UTC")
    return hours, weekdays


@lru_cache(maxsize=4096)
def _clock_at(stamp: pd.Timestamp, zone: str) -> tuple[int, int]:
    """(hour, weekday) of one UTC instant in `zone` (unknown zones: UTC); a campaign asks the same few."""
    try:
        local = stamp.tz_convert(zone)
    except (KeyError, ValueError):
        local = stamp
    return local.hour, local.dayofweek


def is_weekend(weekdays: np.ndarray) -> np.ndarray:
    return weekdays >= 5
