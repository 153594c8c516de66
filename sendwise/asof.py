"""When an export was taken (its as-of): read from the command line, recorded with the raw store, resolved
for the feature build.

Real exports are taken after the fact: an experiment's exposures at one instant, conversions over the days
after, the export weeks later. The last event of such an export is not when the data ends, and label windows
(opens within 72 hours, conversions within an offer's window) can only be closed relative to the time the
export was taken. `sendwise ingest --as-of TIME` records that time here (`raw/as_of.json`, one entry per
distinct export and as-of, written atomically like the raw tables); the feature build uses the latest one
recorded, unless a later event has arrived since (events pushed through the API), in which case the data's
end (the hour after its latest event, the default without any as-of) is used.

An as-of earlier than an event of the data is an error, not a cut-off: an export cannot hold events after it
was taken, so such an as-of is a wrong flag (often a time zone slip), and silently leaving events out would
hide it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sendwise.raw import table_path, write_text_atomic
from sendwise.settings import Settings

AS_OF_FILE = "as_of.json"
EVENT_TABLES = ("email_events", "site_events", "offer_events")
"""The tables whose `occurred_at` is when something happened: the data's time span."""
Source = Literal["given", "recorded", "data"]


class AsOfError(ValueError):
    """An as-of that cannot be: without a time zone, not a time, or before events of the data."""


def parse_as_of(text: str, option: str = "--as-of") -> pd.Timestamp:
    """An ISO 8601 time with `Z` or an offset, as a UTC timestamp; a time without a zone is an error."""
    try:
        stamp = pd.Timestamp(text.strip())
    except (ValueError, TypeError) as error:
        raise AsOfError(
            f"{option} {text!r}: not an ISO 8601 time; give the time the export was taken with Z or an offset, "
            "e.g. 2026-11-20T08:00:00Z"
        ) from error
    if pd.isna(stamp):
        raise AsOfError(f"{option} {text!r}: not a time; give e.g. 2026-11-20T08:00:00Z")
    if stamp.tzinfo is None:
        raise AsOfError(
            f"{option} {text!r} has no time zone; give it with Z or an offset (e.g. {stamp:%Y-%m-%dT%H:%M:%S}Z), "
            "as the data contract asks of every time"
        )
    return stamp.tz_convert("UTC")


def as_timestamp(value: datetime | pd.Timestamp | str) -> pd.Timestamp:
    """A time given in code (a timestamp or text) as UTC; without a zone it is an error, as on the command line."""
    if isinstance(value, str):
        return parse_as_of(value, "as_of")
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        raise AsOfError(f"as_of {stamp} has no time zone; give a time with a zone (UTC, or an offset)")
    return stamp.tz_convert("UTC")


def text(stamp: pd.Timestamp) -> str:
    """`2008-03-17 15:00 UTC` (seconds where there are any)."""
    stamp = stamp.tz_convert("UTC")
    return f"{stamp:%Y-%m-%d %H:%M:%S} UTC" if stamp.second or stamp.microsecond else f"{stamp:%Y-%m-%d %H:%M} UTC"


def data_end(latest_event: pd.Timestamp | None) -> pd.Timestamp:
    """The default as-of: the hour after the data's latest event (now, where there are no events)."""
    if latest_event is None:
        return pd.Timestamp.now(tz="UTC").floor("h")
    return latest_event.floor("h") + pd.Timedelta(hours=1)


def latest_of(times: Iterable[pd.Series | None]) -> pd.Timestamp | None:
    """The latest of some event times (None where there are none)."""
    found = [t.max() for t in times if t is not None and len(t)]
    found = [t for t in found if pd.notna(t)]
    return max(found) if found else None


def latest_event(settings: Settings) -> pd.Timestamp | None:
    """The latest `occurred_at` in the raw store's event tables, read from that column alone."""
    latest: list[pd.Timestamp] = []
    for name in EVENT_TABLES:
        path = table_path(settings, name)
        if not path.exists():
            continue
        column = pq.read_table(path, columns=["occurred_at"]).column("occurred_at")
        found = pc.max(column).as_py() if len(column) else None
        if found is not None:
            latest.append(pd.Timestamp(found).tz_convert("UTC") if found.tzinfo else pd.Timestamp(found, tz="UTC"))
    return max(latest) if latest else None


def check_as_of(as_of: pd.Timestamp, latest: pd.Timestamp | None, where: str, option: str = "--as-of") -> None:
    """An as-of must not be before the data's latest event: the message names both times."""
    if latest is not None and latest > as_of:
        raise AsOfError(
            f"{option} {text(as_of)} is before the latest event of {where} ({text(latest)}): an export cannot "
            "hold events after it was taken. Give the time the export was taken (check its time zone), or "
            "leave --as-of out to use the data's end."
        )


@dataclass(frozen=True)
class AsOf:
    """The as-of the feature build uses, where it came from, and the data's latest event."""

    time: pd.Timestamp
    source: Source
    latest_event: pd.Timestamp | None = None

    def describe(self) -> str:
        """`2008-03-17 15:00 UTC, the data's end` — for sentences about label windows."""
        how = {
            "given": "the --as-of given",
            "recorded": "the as-of recorded at ingest",
            "data": "the data's end",
        }[self.source]
        return f"{text(self.time)}, {how}"


def _record_path(settings: Settings) -> Path:
    return settings.raw_dir / AS_OF_FILE


def recorded(settings: Settings) -> list[dict[str, object]]:
    """Every as-of recorded by an ingest of this home (oldest first)."""
    path = _record_path(settings)
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AsOfError(f"{path}: not valid JSON ({error}); remove it and ingest the exports again") from error
    if not isinstance(entries, list):
        raise AsOfError(f"{path}: expected a list of ingests' as-of entries; remove it and ingest again")
    return entries


def record_as_of(
    settings: Settings, as_of: pd.Timestamp, given: bool, data_dir: Path, latest: pd.Timestamp | None
) -> None:
    """Add an ingest's as-of to the raw store's record (an entry already there is not added twice)."""
    entry = {
        "as_of": as_of.tz_convert("UTC").isoformat(),
        "given": given,
        "data_dir": str(data_dir),
        "latest_event": None if latest is None else latest.tz_convert("UTC").isoformat(),
    }
    entries = recorded(settings)
    if entry in entries:
        return
    write_text_atomic(json.dumps([*entries, entry], indent=2) + "\n", _record_path(settings))


def latest_recorded(settings: Settings) -> tuple[pd.Timestamp, bool] | None:
    """The latest as-of recorded by an ingest, and whether it was given (else it was that data's end)."""
    entries = recorded(settings)
    if not entries:
        return None
    best = max(entries, key=lambda e: (pd.Timestamp(str(e["as_of"])), bool(e.get("given"))))
    return pd.Timestamp(str(best["as_of"])).tz_convert("UTC"), bool(best.get("given"))


def resolve_as_of(settings: Settings, given: pd.Timestamp | None = None) -> AsOf:
    """The as-of of the home's data: `given` (checked against the raw store's events), else the latest one
    recorded by an ingest, else (or where events arrived after it) the data's end."""
    latest = latest_event(settings)
    if given is not None:
        given = as_timestamp(given)
        check_as_of(given, latest, f"the raw store under {settings.raw_dir}")
        return AsOf(given, "given", latest)
    found = latest_recorded(settings)
    if found is not None and (latest is None or found[0] >= latest):
        time, was_given = found
        return AsOf(time, "recorded" if was_given else "data", latest)
    return AsOf(data_end(latest), "data", latest)
