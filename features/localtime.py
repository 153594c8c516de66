"""Local hour and weekday of UTC times in each row's own time zone, vectorized by zone."""

from __future__ import annotations

import numpy as np
import pandas as pd


def local_hour_weekday(times: pd.Series, zones: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(hour 0-23, weekday 0=Monday) of each UTC time in the zone beside it; unknown zones count as UTC."""
    times = pd.Series(pd.to_datetime(times.to_numpy(), utc=True), index=range(len(times)))
    zones = pd.Series(zones.to_numpy(), index=range(len(zones))).fillna("UTC")
    hours = np.empty(len(times), dtype=np.int8)
    weekdays = np.empty(len(times), dtype=np.int8)
    for zone, index in zones.groupby(zones, sort=False).groups.items():
        positions = np.asarray(index)
        try:
            local = times.iloc[positions].dt.tz_convert(str(zone))
        except (KeyError, ValueError):
            local = times.iloc[positions]
        hours[positions] = local.dt.hour.to_numpy()
        weekdays[positions] = local.dt.weekday.to_numpy()
    return hours, weekdays


def is_weekend(weekdays: np.ndarray) -> np.ndarray:
    return weekdays >= 5
