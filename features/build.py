"""Feature tables from the raw events, built so that a feature at time t uses only events before t.

Engagement rows are built at the times training needs (the start of each day a customer was sent an email
or shown an offer) and at `as_of` for serving, not as daily snapshots of every customer. One pass over the
days keeps each customer's decayed counts; a snapshot is the state before that day's events.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
from rich.progress import Progress

from features.activity import READ_WINDOW_HOURS, Evidence, RhythmPrior, fit_prior
from features.labels import (
    AgentCounts,
    OpenPairs,
    agent_counts,
    carrier_counts,
    is_proxied,
    label_sends,
    machine_agents_of,
    open_pairs,
    prepare,
    proxy_agents_of,
)
from features.latest import (
    ACTIVITY_TABLE,
    EMAIL_STATE_TABLE,
    VIEW_EVENTS,
    arrow_table,
    email_state,
    latest_activity,
    with_schema,
)
from features.localtime import is_weekend, local_hour_weekday
from features.offer_values import offer_values
from features.parts import EventShares, Usable, event_shares, share_count
from sendwise import keys
from sendwise.asof import AsOf, Source, resolve_as_of
from sendwise.raw import StagedWriter, load_table, write_parquet_atomic
from sendwise.settings import Settings

HOURS = 24
HALF_LIFE_DAYS = 60.0
PROFILE_HALF_LIFE_DAYS = 180.0
"""Daily rhythms change slowly: hour profiles keep a longer memory than counts and rates."""
_T = TypeVar("_T")
DAY = pd.Timedelta(days=1)
STATIC_TIMESTAMP = pd.Timestamp("2000-01-01", tz="UTC")
SIGNALS = ("open", "click", "session")
SCALARS = (
    "n_emails",
    "n_human_opens",
    "n_clicks",
    "n_sessions",
    "n_purchases",
    "purchase_value",
    "n_proxy_opened",
    "n_own_opened",
)


EVENT_COLUMNS = {
    "email_events": (
        "customer_id",
        "message_id",
        "campaign_id",
        "event",
        "occurred_at",
        "machine_open",
        "bounce_type",
        "user_agent",
        "decision_id",
    ),
    "site_events": ("customer_id", "event", "occurred_at", "category", "value"),
    "offer_events": ("customer_id", "offer_id", "event", "occurred_at", "value", "propensity", "decision_id"),
}
"""The columns of the event tables the build reads (the others, event ids, URLs and product ids, are most of the
tables' memory and no feature's input): a feature that needs another column adds it here."""


class FeatureBuildError(RuntimeError):
    """The raw store cannot give the features (e.g. nothing ingested yet)."""


@dataclass
class FeatureTables:
    """What the feature build produced, for training and reporting."""

    as_of: pd.Timestamp
    customers: pd.DataFrame
    sends: pd.DataFrame
    """Every labelled send of a customer who allows profiling, with the columns of `SEND_COLUMNS`."""
    exposures: pd.DataFrame
    offers: pd.DataFrame
    engagement_rows: int
    as_of_source: Source = "given"
    """Where `as_of` came from: "given" (by the caller), "recorded" (by an ingest's --as-of) or "data" (the
    data's end), for the sentences that say why a label window is not closed yet."""


@dataclass
class _Events:
    """One kind of event as arrays: customer index, day index, local hour, weekend flag, time, value."""

    customer: np.ndarray
    day: np.ndarray
    hour: np.ndarray
    weekend: np.ndarray
    seconds: np.ndarray
    value: np.ndarray
    slot: np.ndarray  # local weekday × 24 + hour of `slot_column` (the send of a read), else 0

    @classmethod
    def empty(cls) -> _Events:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z.astype(np.int8), z.astype(bool), z.astype(float), z.astype(float), z)


def _to_events(
    frame: pd.DataFrame,
    index: pd.Series,
    zones: pd.Series,
    t0: pd.Timestamp,
    value: str | None = None,
    slot_column: str | None = None,
) -> _Events:
    codes = frame["customer_id"].map(index)
    frame = frame[codes.notna()]
    if frame.empty:
        return _Events.empty()
    customer = codes[codes.notna()].to_numpy(dtype=np.int64)
    times = frame["occurred_at"]
    hour, weekday = local_hour_weekday(times, zones.iloc[customer].reset_index(drop=True))
    seconds = (times - t0).dt.total_seconds().to_numpy()
    values = frame[value].fillna(0.0).to_numpy(dtype=float) if value else np.ones(len(frame))
    slot = np.zeros(len(frame), dtype=np.int64)
    if slot_column is not None:
        slot_hour, slot_weekday = local_hour_weekday(frame[slot_column], zones.iloc[customer].reset_index(drop=True))
        slot = slot_weekday.astype(np.int64) * HOURS + slot_hour.astype(np.int64)
    order = np.argsort(seconds, kind="stable")
    return _Events(
        customer=customer[order],
        day=(seconds[order] // 86400).astype(np.int64),
        hour=hour[order].astype(np.int64),
        weekend=is_weekend(weekday)[order],
        seconds=seconds[order],
        value=values[order],
        slot=slot[order],
    )


def _list_column(matrix: np.ndarray, value_type: pa.DataType) -> pa.Array:
    rows, width = matrix.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), type=value_type))


class _State:
    """Each customer's decayed counts, advanced one day at a time."""

    def __init__(self, rows: np.ndarray, categories: list[str]) -> None:
        n_customers = len(rows)
        self.rows = rows  # each customer's row in the customers table (the rhythm prior knows them by it)
        self.hours = {(s, w): np.zeros((n_customers, HOURS), np.float32) for s in SIGNALS for w in (0, 1)}
        self.scalars = {name: np.zeros(n_customers, np.float64) for name in SCALARS}
        self.last = {name: np.full(n_customers, np.nan) for name in ("human_open", "session", "email")}
        self.categories = np.zeros((n_customers, max(len(categories), 1)), np.float32)
        self.rhythm = Evidence.zeros(n_customers)  # visits stay in `hours`; first reads and their send slots here
        self.decay = 0.5 ** (1.0 / HALF_LIFE_DAYS)
        self.profile_decay = 0.5 ** (1.0 / PROFILE_HALF_LIFE_DAYS)

    def age(self) -> None:
        for array in (*self.hours.values(), self.rhythm.reads, self.rhythm.read_slots):
            array *= self.profile_decay
        for array in self.scalars.values():
            array *= self.decay
        self.categories *= self.decay

    def add_profile(self, signal: str, ev: _Events, sl: slice) -> None:
        c, h, w = ev.customer[sl], ev.hour[sl], ev.weekend[sl]
        for flag in (0, 1):
            mask = w == bool(flag)
            np.add.at(self.hours[(signal, flag)], (c[mask], h[mask]), 1.0)

    def add_first_reads(self, ev: _Events, sl: slice) -> None:
        c = ev.customer[sl]
        np.add.at(self.rhythm.reads, (c, ev.hour[sl] + HOURS * ev.weekend[sl]), 1.0)
        np.add.at(self.rhythm.read_slots, (c, ev.slot[sl]), 1.0)

    def evidence(self, customers: np.ndarray) -> Evidence:
        visits = np.concatenate([self.hours[("session", 0)][customers], self.hours[("session", 1)][customers]], axis=1)
        return Evidence(visits, self.rhythm.reads[customers], self.rhythm.read_slots[customers])

    def add_count(self, name: str, ev: _Events, sl: slice, use_value: bool = False) -> None:
        np.add.at(self.scalars[name], ev.customer[sl], ev.value[sl] if use_value else 1.0)

    def touch(self, name: str, ev: _Events, sl: slice) -> None:
        self.last[name][ev.customer[sl]] = np.maximum(
            np.nan_to_num(self.last[name][ev.customer[sl]], nan=-np.inf), ev.seconds[sl]
        )

    def snapshot(
        self, customers: np.ndarray, at_seconds: float, prior: RhythmPrior, zones: np.ndarray
    ) -> dict[str, np.ndarray]:
        row: dict[str, np.ndarray] = {}
        for name in ("n_emails", "n_human_opens", "n_clicks", "n_sessions", "n_purchases", "purchase_value"):
            row[name] = self.scalars[name][customers].astype(np.float32)
        # Behind a privacy proxy (so far as the emails before this day say), opens say nothing: the models
        # then read the customer's other signals instead (features/transform.py).
        proxied = is_proxied(
            self.scalars["n_emails"][customers],
            self.scalars["n_proxy_opened"][customers],
            self.scalars["n_own_opened"][customers],
        )
        row["opens_observable"] = (~proxied).astype(np.float32)
        for name, column in (
            ("human_open", "days_since_human_open"),
            ("session", "days_since_session"),
            (
                "email",
                "days_since_email",
            ),
        ):
            row[column] = ((at_seconds - self.last[name][customers]) / 86400.0).astype(np.float32)
        for signal in SIGNALS:
            row[f"{signal}_hours_weekday"] = self.hours[(signal, 0)][customers].copy()
            row[f"{signal}_hours_weekend"] = self.hours[(signal, 1)][customers].copy()
        row["category_views"] = self.categories[customers].copy()
        rhythm = prior.posterior_mean(self.evidence(customers), zones[customers], self.rows[customers])
        row["rhythm_weekday"], row["rhythm_weekend"] = rhythm[:, :HOURS], rhythm[:, HOURS:]
        return row


def _final_evidence(n_customers: int, streams: dict[str, _Events]) -> Evidence:
    """Every customer's visits and first reads up to `as_of`, undecayed: what the rhythm prior is fitted on."""
    evidence = Evidence.zeros(n_customers)
    visits, reads = streams["session"], streams["first_read"]
    np.add.at(evidence.visits, (visits.customer, visits.hour + HOURS * visits.weekend), 1.0)
    np.add.at(evidence.reads, (reads.customer, reads.hour + HOURS * reads.weekend), 1.0)
    np.add.at(evidence.read_slots, (reads.customer, reads.slot), 1.0)
    return evidence


def _at(sends: pd.DataFrame, column: str) -> pd.DataFrame | None:
    """The sends that have a time in `column`, with it as `occurred_at` (one event per message)."""
    if column not in sends.columns:
        return None
    found = sends[sends[column].notna()]
    return found[["customer_id", "send_at"]].assign(occurred_at=found[column])


def _first_reads(sends: pd.DataFrame) -> pd.DataFrame | None:
    """Each email's first reading by a person (open or click) within the read window, with its send time."""
    reads = _at(sends, "first_read_at")
    if reads is None:
        return None
    return reads[reads["occurred_at"] - reads["send_at"] < pd.Timedelta(hours=READ_WINDOW_HOURS)]


def _read_delays(reads: pd.DataFrame, index: pd.Series, zones: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer row, local send slot, whole hours from the send's hour to the read) of every first read."""
    reads = reads[reads["customer_id"].isin(index.index)]
    customer = reads["customer_id"].map(index).to_numpy(dtype=np.int64)
    hour, weekday = local_hour_weekday(reads["send_at"], zones.iloc[customer].reset_index(drop=True))
    slot = weekday.astype(np.int64) * HOURS + hour.astype(np.int64)
    lag = (reads["occurred_at"] - reads["send_at"].dt.floor("h")).dt.total_seconds() // 3600
    return customer, slot, np.clip(lag.to_numpy(dtype=np.int64), 0, READ_WINDOW_HOURS - 1)


def count_in_previous_week(
    codes: np.ndarray, seconds: np.ndarray, at_codes: np.ndarray, at_seconds: np.ndarray
) -> np.ndarray:
    """For each (customer code, time): the events of that customer (`codes`, `seconds`) in the 7 days before
    it. Times are whole seconds on any common origin; codes are non-negative integers."""
    keys = np.sort((codes.astype(np.int64) << 32) + np.floor(seconds).astype(np.int64))  # customer-major
    asked = (at_codes.astype(np.int64) << 32) + np.floor(at_seconds).astype(np.int64)
    return np.searchsorted(keys, asked, side="left") - np.searchsorted(keys, asked - 7 * 86400, side="left")


def _sends_in_previous_week(sends: _Events, customers: np.ndarray, at_seconds: np.ndarray) -> np.ndarray:
    """Emails each customer was sent in the 7 days before each time (the fatigue the truth knows)."""
    return count_in_previous_week(sends.customer, sends.seconds, customers, at_seconds).astype(np.float32)


def _ineligible_customers(email_events: pd.DataFrame | None) -> set[str]:
    """Customers who unsubscribed, complained or hard-bounced: no more sends to them."""
    if email_events is None or email_events.empty:
        return set()
    stop = email_events["event"].isin(["unsubscribe", "complaint"])
    if "bounce_type" in email_events.columns:
        stop |= (email_events["event"] == "bounce") & (email_events["bounce_type"].astype(str).str.lower() == "hard")
    return set(email_events.loc[stop, "customer_id"])


def _customer_tables(
    customers: pd.DataFrame, as_of: pd.Timestamp, ineligible: set[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    signup = customers.get("signup_at")
    tenure = (as_of - signup).dt.total_seconds() / 86400 if signup is not None else np.nan
    profile = pd.DataFrame(
        {
            "customer_id": customers["customer_id"],
            "event_timestamp": STATIC_TIMESTAMP,
            "timezone": customers["timezone"].fillna("UTC"),
            "country": customers.get("country", pd.Series(None, index=customers.index)).fillna(""),
            "signup_at_days": pd.Series(tenure, index=customers.index).astype("float32"),
            "interests": customers.get("interests", pd.Series("", index=customers.index)).fillna(""),
            "profiling_allowed": customers["consent_profiling"].astype("float32"),
            "consent_email": customers["consent_email"].fillna(False).astype("float32"),
            "email_eligible": (
                customers["consent_email"].fillna(False).astype(bool) & ~customers["customer_id"].isin(ineligible)
            ).astype("float32"),
        }
    )
    attribute_columns = [c for c in customers.columns if c.startswith("attr_")]
    attributes = customers[["customer_id", *attribute_columns]].copy()
    attributes.insert(1, "event_timestamp", STATIC_TIMESTAMP)
    attributes["n_attributes"] = customers[attribute_columns].notna().sum(axis=1).astype("float32")
    return profile, attributes


def _offer_table(offers: pd.DataFrame | None) -> pd.DataFrame:
    columns = [
        "offer_id",
        "event_timestamp",
        "offer_kind",
        "offer_category",
        "discount_pct",
        "price",
        "margin",
    ]
    if offers is None or offers.empty:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(
        {
            "offer_id": offers["offer_id"],
            "event_timestamp": STATIC_TIMESTAMP,
            "offer_kind": offers["kind"],
            "offer_category": offers.get("category", pd.Series(None, index=offers.index)).fillna(""),
        }
    )
    for column in ("discount_pct", "price", "margin"):
        values = offers[column] if column in offers.columns else pd.Series(np.nan, index=offers.index)
        table[column] = values.astype("float32")
    table["margin"] = table["margin"].fillna(1.0)
    return table


def offer_windows(offers: pd.DataFrame | None, offer_ids: pd.Series, default_days: float) -> pd.Series:
    """Each offer's conversion window in days: its own `conversion_window_days`, else `default_days`."""
    own = pd.Series(dtype=float)
    if offers is not None and "conversion_window_days" in offers.columns:
        own = offers.set_index("offer_id")["conversion_window_days"].astype(float)
    return offer_ids.map(own).astype(float).fillna(float(default_days))


def _exposures(
    offer_events: pd.DataFrame | None, window_days: float, offers: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every exposure with its conversion window (`window_days`: the offer's own, else the default) and whether
    a conversion of the same customer and offer followed inside it."""
    keys = ["customer_id", "offer_id", "exposed_at", "propensity", "decision_id"]
    columns = [*keys, "window_days", "converted", "value"]
    if offer_events is None or offer_events.empty:
        return pd.DataFrame(columns=columns)
    exposed = offer_events[offer_events["event"] == "exposed"].rename(columns={"occurred_at": "exposed_at"})
    exposed = exposed[keys].reset_index(drop=True)
    exposed["window_days"] = offer_windows(offers, exposed["offer_id"], window_days).to_numpy()
    exposed["row"] = np.arange(len(exposed))
    converted = offer_events[offer_events["event"] == "converted"][["customer_id", "offer_id", "occurred_at", "value"]]
    joined = exposed.merge(converted, on=["customer_id", "offer_id"], how="inner")
    delay = joined["occurred_at"] - joined["exposed_at"]
    joined = joined[(delay >= pd.Timedelta(0)) & (delay <= pd.to_timedelta(joined["window_days"], unit="D"))]
    first = joined.sort_values("occurred_at").drop_duplicates("row")
    exposed["converted"] = exposed["row"].isin(first["row"])
    exposed["value"] = exposed["row"].map(first.set_index("row")["value"]).astype(float)
    return exposed.drop(columns="row")


@dataclass
class _ShareEvents:
    """What the day-by-day pass needs of one share of the customers: their events as arrays (customer codes are
    rows of the share), the category of each view, and who needs a snapshot at the start of which day."""

    members: np.ndarray  # rows of the customers table, in the share's order
    streams: dict[str, _Events]
    send_events: _Events
    view_events: _Events
    view_category: np.ndarray
    snapshot_days: dict[int, np.ndarray]


def build_feature_tables(settings: Settings, as_of: pd.Timestamp | None = None, progress: bool = True) -> FeatureTables:
    """Write the Parquet feature tables the Feast sources read, and return labels for training.

    The customers are built a share at a time (`features.parts`: at most `feature_share_customers` each), so
    that the build holds one share's events; what needs every customer is decided before: the machine agents
    and the proxies that carry opens (on every customer's opens), the daily-rhythm prior (on every customer's
    visits and reads), the first day and the categories."""
    customers = load_table(settings, "customers")
    if customers is None or customers.empty:
        raise FeatureBuildError(
            f"no customers in the raw store under {settings.raw_dir}: run `sendwise ingest DATA_DIR` first"
        )
    offers = load_table(settings, "offers")
    campaigns = load_table(settings, "campaigns")
    # Without an as-of from the caller: the one an ingest recorded (--as-of), else the data's end.
    resolved = AsOf(as_of, "given") if as_of is not None else resolve_as_of(settings)
    as_of = resolved.time
    customers = customers.reset_index(drop=True)
    ids = customers["customer_id"].to_numpy(dtype=object)
    zones = customers["timezone"].fillna("UTC")
    zone_codes = zones.to_numpy(dtype=object)
    profiled = customers["consent_profiling"].fillna(False).astype(bool).to_numpy()
    usable_rows = Usable(pa.array(customers.loc[profiled, "customer_id"], type=pa.string()), as_of)

    usable = usable_rows.kept  # events of customers who allow profiling, before `as_of`

    count = share_count(len(customers), settings.feature_share_customers)
    share_members = keys.buckets(pd.Series(ids, dtype=object), count)  # the split pass's shares (`features.parts`)
    with (
        event_shares(settings, EVENT_COLUMNS, count, usable_rows, ("email_events",), progress) as shares,
        _ShareWork(settings, count) as share_work,
    ):
        t0 = (shares.earliest if shares.earliest is not None else as_of - DAY).floor("D")
        categories = sorted(shares.categories)
        if offers is not None and "category" in offers.columns:
            categories = sorted(set(categories) | set(offers["category"].dropna().astype(str)))

        ineligible, email_states, agents, carriers = _email_states_and_agents(shares, count, usable, as_of, share_work)

        # Each share labelled, its events made arrays (spilled between passes), its evidence gathered; with
        # several shares, `feature_workers` of them at once, each in a process of its own (`_ShareWork`).
        evidence = Evidence.zeros(len(customers))
        read_delays: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        all_sends: list[pd.DataFrame] = []
        all_exposures: list[pd.DataFrame] = []
        members_of = [np.flatnonzero(share_members == share) for share in range(count)]
        labelling = [
            (share, members, ids[members], zones.iloc[members].reset_index(drop=True))
            for share, members in enumerate(members_of)
        ]
        label = functools.partial(
            _label_share,
            settings=settings,
            shares=shares,
            usable=usable,
            t0=t0,
            categories=categories,
            campaigns=campaigns,
            offers=offers,
            agents=agents,
            carriers=carriers,
        )
        with (
            _staged(settings.feature_tables_dir / f"{ACTIVITY_TABLE}.parquet") as activity,
            Progress(disable=not progress, transient=True) as bar,
        ):
            task = bar.add_task("labelling sends", total=count)
            for members, built in zip(members_of, share_work.each(label, labelling), strict=True):
                all_sends.append(built.sends)
                all_exposures.append(built.exposures)
                activity.write(arrow_table(with_schema(built.activity, ACTIVITY_TABLE), ACTIVITY_TABLE))
                evidence.visits[members] = built.evidence.visits
                evidence.reads[members] = built.evidence.reads
                evidence.read_slots[members] = built.evidence.read_slots
                if built.read_delays is not None:
                    read_delays.append((members[built.read_delays[0]], *built.read_delays[1:]))
                bar.advance(task)
            del labelling
            shares.forget("email_events")
            shares.forget("site_events")
            shares.forget("offer_events")
        prior = fit_prior(
            evidence,
            zone_codes,
            tuple(np.concatenate(parts) for parts in zip(*read_delays, strict=True)) if read_delays else None,  # type: ignore[arg-type]
        )
        del evidence

        n_days = int(np.ceil((as_of - t0) / DAY))
        final_seconds = (as_of - t0).total_seconds()
        target = settings.feature_tables_dir / "engagement_features.parquet"
        engagement = _EngagementWriter(target, t0, categories, settings.feature_batch_rows)
        with engagement, Progress(disable=not progress, transient=True) as bar, _parts_folder(target) as folder:
            task = bar.add_task("building engagement features", total=n_days * count)
            building = [
                (share, folder / f"{share:04d}.arrow", ids[members], zone_codes[members])
                for share, members in enumerate(members_of)
            ]
            build = functools.partial(
                _engagement_part,
                shares=shares,
                t0=t0,
                categories=categories,
                batch_rows=settings.feature_batch_rows,
                n_days=n_days,
                prior=prior,
                final_seconds=final_seconds,
            )
            for part in share_work.each(build, building):
                engagement.append(part)
                bar.advance(task, n_days)
    # In an order of their own, not the shares': the same data gives the same training rows, and so the same
    # models and evaluation splits, however many shares the customers were built in.
    sends = _in_order(_concat(all_sends), ("send_at", "customer_id", "campaign_id"))
    exposures = _in_order(_concat(all_exposures), ("exposed_at", "customer_id", "offer_id"))
    profile, attributes = _customer_tables(customers, as_of, ineligible)
    offer_table = _offer_table(offers)
    email_state_rows = pd.concat(email_states, ignore_index=True) if email_states else email_state(None)
    settings.feature_tables_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (
        ("rhythm_priors", prior.zone_means()),
        ("customer_features", profile),
        ("customer_attributes", attributes),
        ("offer_features", offer_table),
        ("offer_values", offer_values(exposures, offers, as_of, settings.conversion_window_days)),
        (EMAIL_STATE_TABLE, arrow_table(with_schema(email_state_rows, EMAIL_STATE_TABLE), EMAIL_STATE_TABLE)),
    ):
        write_parquet_atomic(frame, settings.feature_tables_dir / f"{name}.parquet")
    return FeatureTables(
        as_of=as_of,
        customers=customers,
        sends=sends,
        exposures=exposures,
        offers=offers if offers is not None else pd.DataFrame(),
        engagement_rows=engagement.rows,
        as_of_source=resolved.source,
    )


def _email_states_and_agents(
    shares: EventShares,
    count: int,
    usable: Callable[[pd.DataFrame | None], pd.DataFrame | None],
    as_of: pd.Timestamp,
    share_work: _ShareWork,
) -> tuple[set[str], list[pd.DataFrame], set[str] | None, set[str] | None]:
    """In one pass over every share's email events: who may no longer be sent to, each share's email state as
    of `as_of`, and the machine agents and the proxies among them that carry their recipients' opens.

    The agents are decided on every customer's opens before any share is labelled, so that every share is
    labelled alike; the carrying proxies need the machine agents first, so each share keeps the compact pairs
    of its opens (`OpenPairs`) until they are known. With one share (None, None), its labelling decides them."""
    ineligible: set[str] = set()
    email_states: list[pd.DataFrame] = []
    counted: list[AgentCounts] = []
    opened: list[OpenPairs] = []
    read = functools.partial(_email_state_and_opens, shares=shares, usable=usable if count > 1 else None, as_of=as_of)
    for found in share_work.each(read, [(share,) for share in range(count)]):
        if found is None:
            continue
        stopped, state, opens = found
        ineligible |= stopped
        email_states.append(state)
        if opens is not None:
            counted.append(opens[0])
            opened.append(opens[1])
    if count == 1:
        return ineligible, email_states, None, None
    if not counted:
        return ineligible, email_states, set(), set()
    agents = machine_agents_of(counted)
    # Every share's recipients: those no machine covers set the baseline.
    return ineligible, email_states, agents, proxy_agents_of([carrier_counts(o, agents) for o in opened])


def _email_state_and_opens(
    share: int,
    *,
    shares: EventShares,
    usable: Callable[[pd.DataFrame | None], pd.DataFrame | None] | None,
    as_of: pd.Timestamp,
) -> tuple[set[str], pd.DataFrame, tuple[AgentCounts, OpenPairs] | None] | None:
    """One share's customers who may no longer be sent to, its email state as of `as_of`, and (given `usable`)
    the agents' counts and the compact pairs of its usable opens; None: no email events."""
    email_events = shares.read("email_events", share)
    if email_events is None:
        return None
    stopped = _ineligible_customers(email_events)
    state = email_state(email_events[email_events["occurred_at"] < as_of])
    mine = usable(email_events) if usable is not None else None
    del email_events
    if mine is None or not len(mine):
        return stopped, state, None
    prepared = prepare(mine)
    return (
        stopped,
        state,
        (agent_counts(prepared.opens, prepared.delivered), open_pairs(prepared.opens, prepared.delivered)),
    )


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The shares' frames one after another (those without rows left out, so that they change no column's type),
    emptying `frames`. Column by column, each dropped from the shares as it is joined, so that the rows are held
    about once rather than twice (tens of millions of sends for a million customers)."""
    full = [frame for frame in frames if len(frame)]
    first = frames[0]
    frames.clear()
    if not full:
        return first
    columns = list(dict.fromkeys(column for frame in full for column in frame.columns))

    def part(frame: pd.DataFrame, column: str) -> pd.Series:
        return frame.pop(column) if column in frame.columns else pd.Series(index=frame.index, dtype=object)

    joined = {column: pd.concat([part(frame, column) for frame in full], ignore_index=True) for column in columns}
    return pd.DataFrame(joined, columns=columns, copy=False)  # each column kept as joined, not copied into blocks


def _in_order(frame: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """`frame`'s rows ordered by `keys` (a stable sort: rows equal in every key keep their order), column by
    column as `_concat` joins them, each column dropped as it is reordered."""
    keys = tuple(key for key in keys if key in frame.columns)
    if len(frame) < 2 or not keys:
        return frame.reset_index(drop=True)
    ranks = [_ranks(frame[key]) for key in reversed(keys)]  # np.lexsort: the last key is the first
    order = np.lexsort(ranks)
    del ranks
    columns = list(frame.columns)
    ordered = {column: frame.pop(column).iloc[order].reset_index(drop=True) for column in columns}
    return pd.DataFrame(ordered, columns=columns, copy=False)


def _ranks(values: pd.Series) -> np.ndarray:
    """Each value's place among the column's distinct values (missing values last), for `np.lexsort`."""
    if values.dtype.kind == "M":
        return values.to_numpy(dtype="datetime64[ns]")  # in UTC; NaT sorts last
    if values.dtype.kind in "iufb":
        return values.to_numpy()  # NaN sorts last
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    place = np.empty(len(uniques) + 1, dtype=np.int64)
    place[np.argsort(np.asarray(uniques, dtype=object), kind="stable")] = np.arange(len(uniques))
    place[-1] = len(uniques)  # code −1: missing
    return place[codes]


SEND_COLUMNS = ("customer_id", "campaign_id", "send_at", "decision_id", "human_open", "proxied", "kind", "topic")
"""What training and the reports need of each labelled send. The rest (the message id, when it was read or
opened through a proxy) only the build needs: a million customers' sends are tens of millions of rows, and a
unique message id each would double what they take."""


def _no_sends() -> pd.DataFrame:
    return pd.DataFrame(columns=["customer_id", "campaign_id", "send_at", "human_open"])


@dataclass
class _LabelledShare:
    """What the build keeps of one labelled share; its events as arrays are set aside (`EventShares.keep`) for
    the engagement pass."""

    sends: pd.DataFrame
    exposures: pd.DataFrame
    activity: pd.DataFrame
    evidence: Evidence  # of the share's customers, in its order
    read_delays: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # customers: rows of the share


class _ShareWork:
    """Runs a function on each share, in share order: in this process, or, with several shares, in
    `settings.feature_workers` spawned processes at once (each holds one share's events; a clean process, not a
    copy of the build's memory), the same processes for every pass."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.workers = min(settings.feature_workers, count)
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _ShareWork:
        if self.workers > 1:
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *_: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def each(self, work: Callable[..., _T], calls: list[tuple[Any, ...]]) -> Iterator[_T]:
        """`work(*call)` for each share's call, in the calls' order."""
        if self.pool is None:
            return (work(*call) for call in calls)
        return self._answered(self.pool.map(work, *zip(*calls, strict=True)))

    def _answered(self, results: Iterator[_T]) -> Iterator[_T]:
        try:
            yield from results
        except BrokenProcessPool as error:
            raise FeatureBuildError(
                f"a feature build worker process stopped abruptly ({error}): it was killed (out of memory?), or "
                "the build was called from a script without `if __name__ == '__main__':` (each worker imports "
                "the main script, which then builds again). Guard the script, or set SENDWISE_FEATURE_WORKERS=1 "
                "to build every share in this process"
            ) from error


@contextlib.contextmanager
def _parts_folder(target: Path) -> Iterator[Path]:
    """A folder beside `target` for the shares' parts of it, removed afterwards."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.stem}-parts-", dir=target.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _label_share(
    share: int,
    members: np.ndarray,
    share_ids: np.ndarray,
    share_zones: pd.Series,
    *,
    settings: Settings,
    shares: EventShares,
    usable: Callable[[pd.DataFrame | None], pd.DataFrame | None],
    t0: pd.Timestamp,
    categories: list[str],
    campaigns: pd.DataFrame | None,
    offers: pd.DataFrame | None,
    agents: set[str] | None,
    carriers: set[str] | None,
) -> _LabelledShare:
    """One share's sends labelled and its events as arrays (customer codes: rows of `members`, whose ids and time
    zones are `share_ids` and `share_zones`), set aside as `events-SHARE` for the engagement pass."""
    index = pd.Series(np.arange(len(members)), index=share_ids)
    email_events = usable(shares.read("email_events", share))
    labels = (
        label_sends(email_events, settings.label_window_hours, agents, carriers)
        if email_events is not None and len(email_events)
        else None
    )
    del email_events  # what the features need of it is in the labels now
    sends = labels.sends if labels is not None else _no_sends()
    if campaigns is not None and len(sends):
        info = campaigns.set_index("campaign_id")[["kind", "topic"]]
        sends = sends.join(info, on="campaign_id")
    if len(sends):
        sends["kind"] = sends.get("kind", pd.Series(index=sends.index, dtype=object)).fillna("promotional")
        sends["topic"] = sends.get("topic", pd.Series(index=sends.index, dtype=object))
    exposures = _exposures(usable(shares.read("offer_events", share)), settings.conversion_window_days, offers)

    human_opens = None
    clicks = None
    if labels is not None:
        human_opens = labels.opens.loc[~labels.opens["is_machine"], ["customer_id", "occurred_at"]]
        clicks = labels.clicks[~labels.clicks["is_machine"]]
    del labels
    site_events = usable(shares.read("site_events", share))
    activity = latest_activity(site_events)
    sessions = None
    purchases = None
    views = None
    if site_events is not None and len(site_events):
        sessions = site_events[site_events["event"] == "session_start"]
        if sessions.empty:
            hourly = site_events.assign(_h=site_events["occurred_at"].dt.floor("h"))
            sessions = hourly.drop_duplicates(["customer_id", "_h"])
        purchases = site_events[site_events["event"] == "purchase"]
        views = site_events[site_events["event"].isin(VIEW_EVENTS)].dropna(subset=["category"])
    del site_events

    def events(frame: pd.DataFrame | None, value: str | None = None) -> _Events:
        return _Events.empty() if frame is None else _to_events(frame, index, share_zones, t0, value)

    send_events = events(sends.rename(columns={"send_at": "occurred_at"}) if len(sends) else None)
    streams = {
        "open": events(human_opens),
        "click": events(clicks),
        "session": events(sessions),
        "purchase": events(purchases, "value"),
        "proxy_opened": events(_at(sends, "proxy_opened_at")),
        "own_opened": events(_at(sends, "first_human_open_at")),
    }
    reads = _first_reads(sends)
    streams["first_read"] = (
        _Events.empty() if reads is None else _to_events(reads, index, share_zones, t0, slot_column="send_at")
    )
    read_delays = None
    if reads is not None:
        read_delays = _read_delays(reads, index, share_zones)
    view_events = events(views)
    view_category = np.zeros(0, dtype=np.int64)
    if views is not None and len(view_events.customer):
        known = views[views["customer_id"].isin(index.index)]
        order = np.argsort((known["occurred_at"] - t0).dt.total_seconds().to_numpy(), kind="stable")
        view_category = pd.Categorical(known["category"].astype(str), categories=categories).codes[order]

    # Which customers need a snapshot at the start of which day.
    needed = [frame for frame in (sends, exposures.rename(columns={"exposed_at": "send_at"})) if len(frame)]
    wanted = pd.concat([f[["customer_id", "send_at"]] for f in needed]) if needed else None
    snapshot_days: dict[int, np.ndarray] = {}
    if wanted is not None:
        wanted = wanted[wanted["customer_id"].isin(index.index)]
        day = ((wanted["send_at"] - t0).dt.total_seconds() // 86400).astype(np.int64)
        pairs = pd.DataFrame({"c": wanted["customer_id"].map(index).to_numpy(), "d": day.to_numpy()})
        pairs = pairs.drop_duplicates()
        snapshot_days = {int(d): g["c"].to_numpy() for d, g in pairs.groupby("d")}
    shares.keep(
        f"events-{share}", _ShareEvents(members, streams, send_events, view_events, view_category, snapshot_days)
    )
    sends = sends[[column for column in SEND_COLUMNS if column in sends.columns]]
    return _LabelledShare(sends, exposures, activity, _final_evidence(len(members), streams), read_delays)


def _engagement_part(
    share: int,
    part: Path,
    share_ids: np.ndarray,
    zones: np.ndarray,
    *,
    shares: EventShares,
    t0: pd.Timestamp,
    categories: list[str],
    batch_rows: int,
    n_days: int,
    prior: RhythmPrior,
    final_seconds: float,
) -> Path:
    """One share's engagement rows (its customers' ids and time zones: `share_ids`, `zones`) written to `part`, an
    Arrow file of the row groups the table will have."""
    events = shares.take(f"events-{share}")
    with _EngagementWriter(part, t0, categories, batch_rows, _ArrowPart(part)) as engagement:
        engagement.begin(share_ids, events.send_events)
        _engagement_of_share(events, categories, n_days, prior, zones, final_seconds, engagement)
    return part


def _engagement_of_share(
    events: _ShareEvents,
    categories: list[str],
    n_days: int,
    prior: RhythmPrior,
    zones: np.ndarray,
    final_seconds: float,
    engagement: _EngagementWriter,
) -> None:
    """One share's customers' decayed counts advanced day by day, snapshots written where they are needed."""
    streams, send_events, view_events = events.streams, events.send_events, events.view_events
    state = _State(events.members, categories)
    bounds = {
        name: np.searchsorted(ev.day, np.arange(n_days + 1))
        for name, ev in {**streams, "emails": send_events, "views": view_events}.items()
    }
    for d in range(n_days):
        if d in events.snapshot_days:
            who = events.snapshot_days[d]
            engagement.add(who, d * 86400.0, state.snapshot(who, d * 86400.0, prior, zones))
        state.age()

        def day_slice(name: str, d: int = d) -> slice:
            return slice(bounds[name][d], bounds[name][d + 1])

        for signal in SIGNALS:
            state.add_profile(signal, streams[signal], day_slice(signal))
        state.add_first_reads(streams["first_read"], day_slice("first_read"))
        state.add_count("n_human_opens", streams["open"], day_slice("open"))
        state.touch("human_open", streams["open"], day_slice("open"))
        state.add_count("n_clicks", streams["click"], day_slice("click"))
        state.add_count("n_sessions", streams["session"], day_slice("session"))
        state.touch("session", streams["session"], day_slice("session"))
        state.add_count("n_purchases", streams["purchase"], day_slice("purchase"))
        state.add_count("purchase_value", streams["purchase"], day_slice("purchase"), use_value=True)
        state.add_count("n_proxy_opened", streams["proxy_opened"], day_slice("proxy_opened"))
        state.add_count("n_own_opened", streams["own_opened"], day_slice("own_opened"))
        state.add_count("n_emails", send_events, day_slice("emails"))
        state.touch("email", send_events, day_slice("emails"))
        views_today = day_slice("views")
        if len(events.view_category) and categories:
            np.add.at(
                state.categories,
                (view_events.customer[views_today], events.view_category[views_today]),
                1.0,
            )
    everyone = np.arange(len(events.members))
    engagement.add(everyone, final_seconds, state.snapshot(everyone, final_seconds, prior, zones))


@contextlib.contextmanager
def _staged(target: Path) -> Iterator[StagedWriter]:
    """A Parquet file written a table at a time, appearing under its own name, whole, only when the block ends
    without an error."""
    file = StagedWriter(target)
    try:
        yield file
    except BaseException:
        file.discard()
        raise
    staged = file.close()
    if staged is not None:
        os.replace(staged, target)


class _EngagementWriter:
    """The engagement table written as it is built: snapshots are gathered until `batch_rows` rows, then
    written as one row group of the Parquet file, so the build holds one batch of rows rather than the whole
    table (which grows with customers × the days they were sent something). The file appears complete, under
    its own name, only when the writer is closed without an error."""

    def __init__(
        self,
        target: Path,
        t0: pd.Timestamp,
        categories: list[str],
        batch_rows: int,
        file: StagedWriter | _ArrowPart | None = None,
    ) -> None:
        self.target = target
        self.file = file if file is not None else StagedWriter(target)
        self.customer_ids = np.zeros(0, dtype=object)
        self.t0 = t0
        self.category_names = np.array(categories or [""], dtype=object)
        self.send_events = _Events.empty()
        self.batch_rows = batch_rows
        self.pending: list[tuple[np.ndarray, float, dict[str, np.ndarray]]] = []
        self.pending_rows = 0
        self.rows = 0

    def begin(self, customer_ids: np.ndarray, send_events: _Events) -> None:
        """The snapshots that follow are of these customers (`add`'s `who` are rows of `customer_ids`), who were
        sent `send_events` (their customer codes rows of `customer_ids` too)."""
        self._flush()
        self.customer_ids = customer_ids
        self.send_events = send_events

    def __enter__(self) -> _EngagementWriter:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        return self

    def add(self, who: np.ndarray, seconds: float, row: dict[str, np.ndarray]) -> None:
        """The snapshot of customers `who` (rows of the customers table) at `seconds` after `t0`."""
        self.pending.append((who, seconds, row))
        self.pending_rows += len(who)
        if self.pending_rows >= self.batch_rows:
            self._flush()

    def append(self, part: Path) -> None:
        """The row groups of a share's part (`_engagement_part`), as they were built (none: no file)."""
        if not part.exists():
            return
        with pa.OSFile(str(part), "rb") as source:
            reader = pa.ipc.open_file(source)
            for k in range(reader.num_record_batches):
                table = pa.Table.from_batches([reader.get_batch(k)])
                self.file.write(table)
                self.rows += table.num_rows
        part.unlink()

    def _flush(self) -> None:
        if not self.pending:
            return
        table = self._table()
        self.file.write(table)
        self.rows += table.num_rows
        self.pending, self.pending_rows = [], 0

    def _table(self) -> pa.Table:
        who = np.concatenate([w for w, _, _ in self.pending])
        seconds = np.concatenate([np.full(len(w), s) for w, s, _ in self.pending])
        columns: dict[str, pa.Array] = {
            "customer_id": pa.array(self.customer_ids[who].astype(str)),
            "event_timestamp": pa.array(
                (self.t0 + pd.to_timedelta(seconds, unit="s")).as_unit("us"), type=pa.timestamp("us", tz="UTC")
            ),
        }
        columns["sends_7d"] = pa.array(_sends_in_previous_week(self.send_events, who, seconds))
        for name in self.pending[0][2]:
            stacked = np.concatenate([row[name] for _, _, row in self.pending])
            if stacked.ndim == 2:
                columns[name] = _list_column(stacked.astype(np.float32), pa.float32())
            else:
                columns[name] = pa.array(stacked.astype(np.float32))
        columns["category_names"] = _list_column(np.tile(self.category_names, (len(who), 1)), pa.string())
        return pa.table(columns)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> None:
        try:
            if kind is None:
                self._flush()
        except BaseException:
            self.file.discard()
            raise
        if kind is not None:
            self.file.discard()
        elif (staged := self.file.close()) is not None and staged != self.target:
            os.replace(staged, self.target)


class _ArrowPart:
    """A share's part of the engagement table: an Arrow file (LZ4), one record batch per row group to be."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sink: pa.OSFile | None = None
        self.writer: pa.ipc.RecordBatchFileWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.sink = pa.OSFile(str(self.path), "wb")
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            self.writer = pa.ipc.new_file(self.sink, table.schema, options=options)
        batches = table.combine_chunks().to_batches()
        self.writer.write_batch(batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema))

    def close(self) -> Path | None:
        if self.writer is None or self.sink is None:
            return None
        self.writer.close()
        self.sink.close()
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
        self.path.unlink(missing_ok=True)
