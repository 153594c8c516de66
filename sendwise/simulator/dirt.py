"""The dirt a simulated world's exports carry on purpose, as real exports do, so the ingest meets it.

Event names in other spellings (an ESP's `Opened`, `processed`, `spamreport`), rows delivered twice, site
events without an id, rows broken one way each (an unknown event, an empty customer, no time stamp), events
of customers the customers table lacks, stale copies of customers, a `UK` for `GB`, and campaigns that break
the contract. Every draw comes from the dirt's own random stream, so the clean data is the same with or
without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sendwise.simulator.options import Rates
from sendwise.simulator.records import EMAIL_EVENTS, PAGE_VIEW, PURCHASE, SESSION_START, SITE_EVENTS, iso

EMAIL_ALIASES = {
    "sent": ("processed", "accepted", "Sent"),
    "delivered": ("Delivered", "DELIVERED"),
    "open": ("Opened", "opened", "OPEN"),
    "click": ("Clicked", "clicked"),
    "bounce": ("bounced", "Bounce", "dropped"),
    "unsubscribe": ("unsubscribed", "Unsubscribe"),
    "complaint": ("spamreport", "spam"),
}
"""Other spellings of the email events, as ESPs export them."""
SITE_ALIASES = ((SESSION_START, "Session_Start"), (PAGE_VIEW, "PAGE_VIEW"), (PURCHASE, "Purchase"))


@dataclass(frozen=True)
class EventDirt:
    """The broken and foreign rows of one event table: `junk` rows broken one way each (one in three with
    one of `bad_events`), and `unknown` rows of customers the customers table lacks (events `unknown_events`).
    Their event ids start with `prefix`."""

    prefix: str
    bad_events: tuple[str, ...]
    junk: int
    unknown: int = 0
    unknown_events: tuple[str, ...] = ()


EMAIL_DIRT = EventDirt("ee", ("deferred", "opne", "link_clicked", "block"), 24, 12, ("sent", "delivered"))
SITE_DIRT = EventDirt("se", ("add_to_wishlist", "search"), 12, 20, ("session_start", "page_view"))
OFFER_DIRT = EventDirt("oe", ("viewed", "redeemed"), 6)


def email_event_names(events: np.ndarray, rng: np.random.Generator, rates: Rates) -> tuple[list[str], np.ndarray]:
    """The names the email events are written with, and each row's code into them: an `alias_share` of the
    rows under one of their event's aliases."""
    n = len(events)
    names = list(EMAIL_EVENTS)
    name_code = events.astype(np.int64).copy()
    aliased = np.flatnonzero(rng.random(n) < rates.alias_share)
    for event, aliases in EMAIL_ALIASES.items():
        rows = aliased[name_code[aliased] == EMAIL_EVENTS.index(event)]
        codes = len(names) + rng.integers(0, len(aliases), len(rows))
        names.extend(aliases)
        name_code[rows] = codes
    return names, name_code


def site_event_names(events: np.ndarray, rng: np.random.Generator, rates: Rates) -> tuple[list[str], np.ndarray]:
    """Like `email_event_names`: half as many rows in another case, of three events."""
    n = len(events)
    names = [*SITE_EVENTS, *(alias for _, alias in SITE_ALIASES)]
    name_code = events.astype(np.int64).copy()
    for alias, (event, _) in enumerate(SITE_ALIASES, start=len(SITE_EVENTS)):
        rows = np.flatnonzero((name_code == event) & (rng.random(n) < rates.alias_share / 2))
        name_code[rows] = alias
    return names, name_code


def without_some_ids(event_ids: pa.Array, rng: np.random.Generator) -> pa.Array:
    """Event ids with one in a hundred missing (the ingest then derives an id from the row)."""
    no_id = pa.array(rng.random(len(event_ids)) < 0.01)
    return pc.if_else(no_id, pa.scalar(None, pa.string()), event_ids)


def dirty_events(
    table: pa.Table, dirt: EventDirt, duplicate_share: float, n_customers: int, rng: np.random.Generator
) -> pa.Table:
    """An event table with a `duplicate_share` of its rows delivered twice, and the broken and foreign rows
    of `dirt` where their time stamps belong."""
    table = table.take(pa.array(duplicated_order(table.num_rows, duplicate_share, rng)))
    extras = [junk_rows(table, rng, dirt.bad_events, prefix=f"{dirt.prefix}-bad-", count=dirt.junk)]
    if dirt.unknown:
        prefix = f"{dirt.prefix}-unk-"
        extras.append(unknown_customer_rows(table, rng, n_customers, dirt.unknown, prefix, dirt.unknown_events))
    return interleave(table, extras, rng)


def duplicated_order(n: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """Row order with a `share` of rows delivered twice (each copy right after its original)."""
    copies = rng.choice(n, round(share * n), replace=False) if n else np.empty(0, np.int64)
    return np.sort(np.concatenate([np.arange(n), copies]), kind="stable")


def junk_rows(
    table: pa.Table, rng: np.random.Generator, bad_events: tuple[str, ...], prefix: str, count: int
) -> pa.Table:
    """Copies of random rows, each broken one way: an unknown event, an empty customer_id, no time stamp."""
    if not table.num_rows:
        return table.slice(0, 0)
    rows = table.take(pa.array(rng.choice(table.num_rows, count))).to_pylist()
    for i, row in enumerate(rows):
        row["event_id"] = f"{prefix}{i + 1:04d}"
        breakage = i % 3
        if breakage == 0:
            row["event"] = bad_events[i % len(bad_events)]
        elif breakage == 1:
            row["customer_id"] = "" if i % 2 else "   "
        else:
            row["occurred_at"] = None
    return pa.Table.from_pylist(rows, schema=table.schema)


def unknown_customer_rows(
    table: pa.Table,
    rng: np.random.Generator,
    n_customers: int,
    count: int,
    prefix: str,
    events: tuple[str, ...],
) -> pa.Table:
    """Rows for customer ids the customers table lacks: new ids, and look-alikes short of a leading zero."""
    if not table.num_rows:
        return table.slice(0, 0)
    rows = table.take(pa.array(rng.choice(table.num_rows, count))).to_pylist()
    for i, row in enumerate(rows):
        known = int(rng.integers(1, n_customers + 1))
        row["customer_id"] = f"c-{n_customers + 1 + i:06d}" if i % 2 else f"c-{known:05d}"
        row["event_id"] = f"{prefix}{i + 1:04d}"
        row["event"] = events[i % len(events)]
        for column in ("machine_open", "bounce_type", "user_agent", "url", "category", "product_id", "value"):
            if column in row:
                row[column] = None
        if "message_id" in row:
            row["message_id"] = f"m-unk-{i // len(events) + 1:04d}"
    return pa.Table.from_pylist(rows, schema=table.schema)


def interleave(table: pa.Table, extras: list[pa.Table], rng: np.random.Generator) -> pa.Table:
    """Insert extra rows where their time stamps belong (rows without one at a random place)."""
    extra = pa.concat_tables(extras)
    if not extra.num_rows:
        return table
    times = table.column("occurred_at").cast(pa.int64()).to_numpy(zero_copy_only=False)
    extra_times = extra.column("occurred_at").cast(pa.int64())
    missing = extra_times.is_null().to_numpy(zero_copy_only=False)
    at = np.searchsorted(times, extra_times.fill_null(0).to_numpy(zero_copy_only=False), side="right") - 0.5
    at = np.where(missing, rng.integers(0, max(table.num_rows, 1), extra.num_rows) - 0.5, at)
    order = np.argsort(np.concatenate([np.arange(table.num_rows), at]), kind="stable")
    return pa.concat_tables([table, extra]).take(pa.array(order))


def dirty_customers(frame: pd.DataFrame, params: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """customers.csv's rows with a tenth of the British as `UK`, stale earlier copies of one customer in 300
    (an older `updated_at` and tier, after the current row: the latest `updated_at` must win, not the last
    row), and two broken rows (no customer_id; an impossible signup time)."""
    n = len(frame)
    frame = frame.assign(country=frame["country"].where(~((frame["country"] == "GB") & (rng.random(n) < 0.1)), "UK"))
    stale = frame.sample(n=max(1, n // 300), random_state=rng.integers(2**31)) if n else frame.head(0)
    stale = stale.assign(
        updated_at=iso(params.loc[stale.index, "updated_at"] - pd.Timedelta(days=30)),
        attr_loyalty_tier="bronze",
    )
    junk = pd.DataFrame(
        [
            {**frame.iloc[0].to_dict(), "customer_id": "", "updated_at": ""},
            {**frame.iloc[0].to_dict(), "customer_id": "c-broken-1", "signup_at": "2026-02-30T25:61:00Z"},
        ]
    )
    return pd.concat([frame, stale, junk], ignore_index=True)


def dirty_campaigns(frame: pd.DataFrame) -> pd.DataFrame:
    """campaigns.csv's rows and two that break the contract: an unknown kind, an unreadable time."""
    junk = pd.DataFrame(
        [
            {"campaign_id": "cmp-9001", "kind": "blast", "topic": "outdoor", "subject": "?", "created_at": ""},
            {
                "campaign_id": "cmp-9002",
                "kind": "newsletter",
                "topic": "",
                "subject": "?",
                "created_at": "last tuesday",
            },
        ]
    )
    return pd.concat([frame, junk], ignore_index=True)
