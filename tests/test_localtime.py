"""Local clocks: the vectorized conversion equals converting each time on its own, whatever the time unit."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from features.localtime import clock_at, local_hour_weekday
from serving.assign import local_window_clock

ZONES = ["Europe/Berlin", "America/Vancouver", "Asia/Kolkata", "Australia/Lord_Howe", "UTC", None, "Not/AZone"]


def _one_by_one(times: pd.Series, zones: list[str | None]) -> tuple[list[int], list[int]]:
    hours, weekdays = [], []
    for stamp, zone in zip(pd.to_datetime(times, utc=True), zones, strict=True):
        try:
            local = stamp.tz_convert(zone or "UTC")
        except (KeyError, ValueError):
            local = stamp
        hours.append(local.hour)
        weekdays.append(local.dayofweek)
    return hours, weekdays


@pytest.mark.parametrize("unit", ["s", "us", "ns"])
@pytest.mark.parametrize("same_time", [True, False])
def test_local_hour_weekday_equals_converting_each_time(unit: str, same_time: bool) -> None:
    rng = np.random.default_rng(3)
    n = 400
    zones = [ZONES[i] for i in rng.integers(0, len(ZONES), n)]
    seconds = np.full(n, 1_793_000_000) if same_time else rng.integers(1_700_000_000, 1_900_000_000, n)
    times = pd.Series(pd.to_datetime(seconds, unit="s", utc=True).as_unit(unit))
    hours, weekdays = local_hour_weekday(times, pd.Series(zones, dtype=object))
    expected_hours, expected_weekdays = _one_by_one(times, zones)
    assert hours.tolist() == expected_hours
    assert weekdays.tolist() == expected_weekdays
    # a window start given as a datetime (what a campaign sends) too
    start = datetime(2026, 3, 29, 1, tzinfo=UTC)  # Europe's switch to summer time
    hours, weekdays = local_hour_weekday(pd.Series([pd.Timestamp(start)] * n), pd.Series(zones, dtype=object))
    assert hours.tolist() == _one_by_one(pd.Series([pd.Timestamp(start)] * n), zones)[0]


@pytest.mark.parametrize("unit", ["s", "us", "ns"])
def test_one_instant_in_many_zones_equals_converting_each_row(unit: str) -> None:
    for zones in (np.array(ZONES * 3, dtype=object), np.array(ZONES * 100, dtype=object)):  # few rows, many
        _check_clock_at(unit, zones)


def _check_clock_at(unit: str, zones: np.ndarray) -> None:
    for start in (datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 11, 1, 15, tzinfo=UTC)):
        instant = pd.Timestamp(start).as_unit(unit)
        hours, weekdays = clock_at(instant, zones)
        expected = _one_by_one(pd.Series([instant] * len(zones)), list(zones))
        assert (hours.tolist(), weekdays.tolist()) == expected
        assert hours.dtype == weekdays.dtype == np.int8  # as local_hour_weekday gives them


def test_window_clock_matches_the_row_conversion_across_a_switch() -> None:
    start = datetime(2026, 3, 28, 20, tzinfo=UTC)
    hour, weekday = local_window_clock(start, 30, ZONES)
    stamps = pd.date_range(start, periods=30, freq="h", tz=UTC)
    for row, zone in enumerate(ZONES):
        expected = _one_by_one(pd.Series(stamps), [zone] * 30)
        assert hour[row].tolist() == expected[0] and weekday[row].tolist() == expected[1]
    again, _ = local_window_clock(start, 30, ZONES)  # from the cache: the same, and not shared for writing
    again[0, 0] = 99
    assert local_window_clock(start, 30, ZONES)[0][0, 0] == hour[0, 0]
