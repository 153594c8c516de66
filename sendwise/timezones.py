"""Time zones of customers: checking the given ones and inferring the missing ones.

A customer's zone is, in this order of preference:

1. **given**: the ``timezone`` column, when ``zoneinfo`` knows the name (matched case-insensitively);
2. **country**: the zone of the customer's country, for countries where one zone dominates. "Dominates" is
   read from the tz database itself (``zone.tab`` shipped by ``tzdata``): every zone listed for the country
   keeps the same clock (the same UTC offset in January and in July), so the country has one local time, and
   the first zone listed (the country's principal one) is taken. ``DE`` (Berlin and Busingen) qualifies;
   ``US``, ``ES`` (Canary Islands) or ``CN`` (Urumqi) do not: no hand-made table of big countries is used;
3. **activity**: the whole-hour UTC offset that best aligns the hours of the customer's own activity (site
   sessions, human opens and clicks, in UTC) with the local-hour histogram of the customers whose zone is
   known (given or from the country), mapped to a fixed zone such as ``Etc/GMT-3`` (UTC+3: the sign of
   ``Etc`` zones is inverted). Only for customers who consented to profiling and have at least
   ``MIN_ACTIVITY_EVENTS`` events, and only when the population gives ``MIN_POPULATION_EVENTS`` events;
4. **unknown**: ``UTC``, marked inferred like 2 and 3.
"""

from __future__ import annotations

import functools
import zoneinfo
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from importlib import resources

import numpy as np
import pandas as pd

from sendwise import keys

MIN_ACTIVITY_EVENTS = 10
MIN_POPULATION_EVENTS = 200
MIN_POPULATION_CUSTOMERS = 20
OFFSETS = np.arange(-12, 15)  # the whole-hour UTC offsets that Etc/GMT zones cover
UNKNOWN_ZONE = "UTC"
# two instants a season apart: zones that agree at both keep the same clock all year
_REFERENCE_INSTANTS = (datetime(2026, 1, 15, 12, tzinfo=UTC), datetime(2026, 7, 15, 12, tzinfo=UTC))


class TimezoneSource(StrEnum):
    """Where a customer's time zone comes from."""

    GIVEN = "given"
    COUNTRY = "country"
    ACTIVITY = "activity"
    UNKNOWN = "unknown"


def _tzdata_lines(file_name: str) -> list[list[str]]:
    text = resources.files("tzdata").joinpath("zoneinfo", file_name).read_text(encoding="utf-8")
    return [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]


@functools.cache
def known_zones() -> frozenset[str]:
    """Every zone name ``zoneinfo`` knows."""
    return frozenset(zoneinfo.available_timezones())


@functools.cache
def _zones_by_lower_name() -> dict[str, str]:
    return {name.lower(): name for name in sorted(known_zones())}


@functools.cache
def iso_countries() -> frozenset[str]:
    """ISO 3166-1 alpha-2 codes, from ``iso3166.tab``."""
    return frozenset(row[0] for row in _tzdata_lines("iso3166.tab"))


def _clock(zone: str) -> tuple[float, ...]:
    tz = zoneinfo.ZoneInfo(zone)
    return tuple(_offset(instant.astimezone(tz)).total_seconds() for instant in _REFERENCE_INSTANTS)


def _offset(local: datetime) -> timedelta:
    offset = local.utcoffset()
    if offset is None:  # an aware time in a ZoneInfo always has one
        raise ValueError(f"no UTC offset for {local}")
    return offset


@functools.cache
def country_zones() -> dict[str, str]:
    """Countries with one local time, mapped to their principal zone (see the module docstring)."""
    zones_of: dict[str, list[str]] = {}
    for row in _tzdata_lines("zone.tab"):
        if row[2] in known_zones():
            zones_of.setdefault(row[0], []).append(row[2])
    return {country: zones[0] for country, zones in zones_of.items() if len({_clock(zone) for zone in zones}) == 1}


def canonical_zone_names(values: pd.Series) -> pd.Series:
    """The zone names ``zoneinfo`` knows, spelled canonically (any case); None where unknown or missing."""
    words = values.astype("string").str.strip()
    codes, uniques = pd.factorize(words)
    lookup = _zones_by_lower_name()
    names = np.array([lookup.get(str(word).lower()) for word in uniques] + [None], dtype=object)
    return pd.Series(names[codes], index=values.index, dtype=object)


def zone_for_offset(hours: int) -> str:
    """A fixed zone whose local time is UTC + ``hours`` (``Etc/GMT-3`` is UTC+3)."""
    return "Etc/GMT" if hours == 0 else f"Etc/GMT{-hours:+d}"


def _local_hours(times: pd.Series, zones: pd.Series) -> np.ndarray:
    hours = np.empty(len(times), dtype=np.int64)
    positions = pd.RangeIndex(len(times))
    for zone, where in pd.Series(positions, index=zones.to_numpy()).groupby(level=0):
        chosen = where.to_numpy()
        hours[chosen] = times.iloc[chosen].dt.tz_convert(str(zone)).dt.hour.to_numpy()
    return hours


class ActivityHours:
    """The customers' activity hours as the inference from activity reads them, gathered from the activity a
    part at a time (``add``, in the activity's order): its memory grows with the customers, not the events.

    ``customers`` are those ``infer_timezones`` is given; the activity has ``customer_id`` and ``occurred_at``
    (UTC)."""

    def __init__(self, customers: pd.DataFrame) -> None:
        zone, _ = _given_or_country(customers)
        missing = zone.isna()
        allowed = customers["consent_profiling"].fillna(False).astype(bool)
        self.needed = bool(missing.any())
        self.known = pd.Series(zone[~missing].to_numpy(), index=customers.loc[~missing, "customer_id"].to_numpy())
        self.allowed = keys.value_set(customers.loc[allowed, "customer_id"])
        self.candidates = pd.Index(customers.loc[missing & allowed, "customer_id"].unique())
        self.rows = 0  # activity of customers who allowed profiling
        self.population_events = 0
        self.population_customers: set[object] = set()
        self.density = np.zeros(24, dtype=np.int64)
        self.counts = np.zeros((len(self.candidates), 24), dtype=np.int64)
        self.first_seen = np.full(len(self.candidates), np.iinfo(np.int64).max, dtype=np.int64)

    def add(self, activity: pd.DataFrame | None) -> None:
        if not self.needed or activity is None or activity.empty:
            return
        allowed = activity.loc[keys.is_in(activity["customer_id"], self.allowed)].reset_index(drop=True)
        zones = allowed["customer_id"].map(self.known)
        population = allowed.loc[zones.notna()]
        self.population_events += len(population)
        self.population_customers.update(population["customer_id"].unique())
        if len(population):
            local = _local_hours(population["occurred_at"], zones.loc[population.index])
            self.density += np.bincount(local, minlength=24)
        codes = self.candidates.get_indexer(allowed["customer_id"])
        mine = codes >= 0
        if mine.any():
            hours = allowed["occurred_at"].dt.hour.to_numpy()[mine]
            self.counts += np.bincount(codes[mine] * 24 + hours, minlength=len(self.candidates) * 24).reshape(-1, 24)
            first, where = np.unique(codes[mine], return_index=True)
            positions = self.rows + np.flatnonzero(mine)[where]
            self.first_seen[first] = np.minimum(self.first_seen[first], positions)
        self.rows += len(allowed)

    def best_offsets(self) -> tuple[pd.Series, str | None]:
        """The whole-hour UTC offset for each candidate customer whose activity says enough (indexed by
        customer_id, only for those inferred) and, when nothing could be inferred because the population is too
        small, the reason."""
        empty = pd.Series(dtype=np.int64)
        if self.rows == 0 or self.candidates.empty:
            return empty, None
        if self.population_events < MIN_POPULATION_EVENTS or len(self.population_customers) < MIN_POPULATION_CUSTOMERS:
            return empty, (
                f"time zones were not inferred from activity: customers with a known zone have "
                f"{self.population_events} activity events (at least {MIN_POPULATION_EVENTS} from "
                f"{MIN_POPULATION_CUSTOMERS} customers are needed)"
            )
        density = self.density.astype(float) + 1.0
        log_density = np.log(density / density.sum())
        seen = np.flatnonzero(self.first_seen < np.iinfo(np.int64).max)
        seen = seen[np.argsort(self.first_seen[seen], kind="stable")]  # in the order the activity met them
        counts = self.counts[seen]
        customers = self.candidates[seen]
        enough = counts.sum(axis=1) >= MIN_ACTIVITY_EVENTS
        # score[c, j] = sum over hours h of counts[c, h] * log p_local(h + OFFSETS[j])
        shifted = log_density[(np.arange(24)[:, None] + OFFSETS[None, :]) % 24]
        scores = counts[enough] @ shifted
        return pd.Series(OFFSETS[scores.argmax(axis=1)], index=customers[enough], dtype=np.int64), None


def best_offsets(activity: pd.DataFrame, customers: pd.DataFrame) -> tuple[pd.Series, str | None]:
    """``ActivityHours.best_offsets`` of the whole ``activity`` at once."""
    hours = ActivityHours(customers)
    hours.add(activity)
    return hours.best_offsets()


def _given_or_country(customers: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The customers' zones, given or from their country (missing where neither), and where each came from."""
    zone = customers["timezone"].astype(object).where(customers["timezone"].notna(), None)
    source = pd.Series(TimezoneSource.GIVEN.value, index=customers.index, dtype=object)
    missing = zone.isna()
    from_country = customers["country"].map(country_zones()).where(missing)
    zone = zone.where(~from_country.notna(), from_country)
    source[from_country.notna()] = TimezoneSource.COUNTRY.value
    return zone, source


def infer_timezones(customers: pd.DataFrame, activity: pd.DataFrame | ActivityHours) -> tuple[pd.DataFrame, list[str]]:
    """Fill in every missing zone of ``customers`` and say where each zone came from.

    ``customers`` has ``customer_id``, ``timezone`` (a known zone name or missing), ``country`` and
    ``consent_profiling``; ``activity`` has ``customer_id`` and ``occurred_at``, or is their ``ActivityHours``
    gathered a part at a time. Returns a frame on the same index with ``timezone`` (always a valid zone) and
    ``source`` (a ``TimezoneSource`` value), and notes.
    """
    zone, source = _given_or_country(customers)
    missing = zone.isna()

    notes: list[str] = []
    if missing.any():
        offsets, note = (
            activity.best_offsets() if isinstance(activity, ActivityHours) else best_offsets(activity, customers)
        )
        if note:
            notes.append(note)
        from_activity = customers["customer_id"].map(offsets).where(missing)
        found = from_activity.notna()
        zone[found] = [zone_for_offset(int(hours)) for hours in from_activity[found]]
        source[found] = TimezoneSource.ACTIVITY.value
        missing = zone.isna()

    zone[missing] = UNKNOWN_ZONE
    source[missing] = TimezoneSource.UNKNOWN.value
    return pd.DataFrame({"timezone": zone, "source": source}, index=customers.index), notes
