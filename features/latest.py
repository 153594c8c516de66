"""Latest values: what a customer did last and whether email to them has stopped, as of each event that changed
it. One definition for the batch build (every change, for point-in-time joins and materializing) and for the
events pushed to a running service (`serving.events`: the customers' current rows updated by a batch).

Two tables, each the batch source of a Feast push source (`features.repo`):

- `latest_activity`: the last site visit (any site event), the last category viewed (a product view, cart or
  purchase with a category), the last purchase and its category. Events of customers who allow profiling only.
- `email_state`: whether the customer unsubscribed, complained or hard-bounced, for every customer who did
  (consent is not profiling). A customer without a row has done none of them. Its consent columns hold the
  consent a `customers` row pushed through `POST /v1/events` gave (`updated_at` deciding between rows, as the
  contract says); missing where none was pushed, and in the batch build, whose consent is the customers table's.

A row is the state after an event: times as seconds since the Unix epoch (missing: never), categories as
text, flags 1 once set. One row per customer and event time where a value changed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

ACTIVITY_TABLE = "latest_activity"
EMAIL_STATE_TABLE = "email_state"
KEY = "customer_id"
TIME = "event_timestamp"

ACTIVITY_TIMES = ("last_session_ts", "last_purchase_ts")
ACTIVITY_TEXTS = ("last_viewed_category", "last_purchase_category")
ACTIVITY_COLUMNS = (*ACTIVITY_TIMES, *ACTIVITY_TEXTS)
EMAIL_FLAGS = ("unsubscribed", "complained", "hard_bounced")
EMAIL_CONSENTS = ("event_consent_email", "event_consent_profiling")
"""Consent as the latest pushed `customers` row gave it: 1 given, 0 withdrawn, missing where no row was pushed."""

VIEW_EVENTS = ("product_view", "add_to_cart", "purchase")


def _utc_micros(times: pd.Series) -> pd.Series:
    return times.astype("datetime64[us, UTC]")


def _seconds(times: pd.Series) -> np.ndarray:
    return _utc_micros(times).array.asi8 / 1e6


def activity_changes(site_events: pd.DataFrame | None) -> pd.DataFrame:
    """One row per site event, with the values it sets (missing where it sets none)."""
    if site_events is None or site_events.empty:
        return _empty_activity()
    events = site_events.loc[site_events[KEY].notna()]
    times = _utc_micros(events["occurred_at"])
    seconds = times.array.asi8 / 1e6
    is_purchase = (events["event"] == "purchase").to_numpy()
    category = events["category"].to_numpy(dtype=object)
    viewed = events["event"].isin(VIEW_EVENTS).to_numpy() & events["category"].notna().to_numpy()
    return pd.DataFrame(
        {
            KEY: events[KEY].astype(str).to_numpy(),
            TIME: times.array,
            "last_session_ts": seconds,
            "last_purchase_ts": np.where(is_purchase, seconds, np.nan),
            "last_viewed_category": np.where(viewed, category, None),
            "last_purchase_category": np.where(is_purchase & viewed, category, None),
        }
    )


def email_state_changes(email_events: pd.DataFrame | None) -> pd.DataFrame:
    """One row per unsubscribe, complaint or hard bounce, with the flag it sets."""
    if email_events is None or email_events.empty:
        return _empty_email_state()
    event = email_events["event"]
    hard = (event == "bounce") & (email_events["bounce_type"] == "hard").fillna(False).astype(bool)
    stops = email_events.loc[(event == "unsubscribe") | (event == "complaint") | hard]
    return pd.DataFrame(
        {
            KEY: stops[KEY].astype(str).to_numpy(),
            TIME: _utc_micros(stops["occurred_at"]).array,
            "unsubscribed": (stops["event"] == "unsubscribe").to_numpy(dtype=np.float32),
            "complained": (stops["event"] == "complaint").to_numpy(dtype=np.float32),
            "hard_bounced": (stops["event"] == "bounce").to_numpy(dtype=np.float32),
        }
    )


def consent_changes(customers: pd.DataFrame | None, received_at: pd.Timestamp) -> pd.DataFrame:
    """One row per `customers` row, with the consent it gives, at its `updated_at` (missing: `received_at`, so
    that it follows what was pushed before it, as a later row in file order wins)."""
    if customers is None or customers.empty:
        return _empty_email_state()
    rows = customers.loc[customers[KEY].notna()]
    updated = _utc_micros(rows["updated_at"]) if "updated_at" in rows.columns else None
    times = pd.Series(pd.Timestamp(received_at).tz_convert("UTC"), index=rows.index).astype("datetime64[us, UTC]")
    if updated is not None:
        times = updated.where(updated.notna(), times)
    frame = pd.DataFrame({KEY: rows[KEY].astype(str).to_numpy(), TIME: times.array})
    for name, column in zip(EMAIL_CONSENTS, ("consent_email", "consent_profiling"), strict=True):
        given = rows[column] if column in rows.columns else pd.Series(pd.NA, index=rows.index, dtype=object)
        frame[name] = given.map(lambda v: np.nan if pd.isna(v) else float(bool(v))).to_numpy(dtype=np.float32)
    for name in EMAIL_FLAGS:
        frame[name] = np.float32(0.0)
    return frame


def accumulate(changes: pd.DataFrame, columns: tuple[str, ...], flags: tuple[str, ...] = ()) -> pd.DataFrame:
    """The state after each change: every value carried forward from the customer's earlier rows, flags kept
    once set; one row per customer and time (the last change at a time wins), ordered by customer and time.
    `changes` may start with the customers' current rows, which the new changes then update.

    Customers are numbered in the order of their ids and the rows sorted on (number, time) as integers, and
    the values carried forward by a running maximum of the row each was last set on: no per-customer Python
    work and no sorting or grouping on the id strings, which the build does for every site event."""
    if changes.empty:
        return changes.reset_index(drop=True)
    codes, _ = pd.factorize(changes[KEY].to_numpy(), sort=True)
    micros = pd.to_datetime(changes[TIME], utc=True).astype("datetime64[us, UTC]").array.asi8
    order = np.lexsort((micros, codes))  # stable: rows at the same customer and time keep their order
    codes, micros = codes[order], micros[order]
    position = np.arange(len(order))
    first = np.maximum.accumulate(np.where(np.r_[True, codes[1:] != codes[:-1]], position, 0))
    last_at_time = np.r_[(codes[1:] != codes[:-1]) | (micros[1:] != micros[:-1]), True]
    state = pd.DataFrame({KEY: changes[KEY].to_numpy()[order], TIME: changes[TIME].array.take(order)})
    for name in columns:
        values = changes[name].to_numpy()[order]
        set_on = np.maximum.accumulate(np.where(pd.notna(values), position, -1))
        carried = values[np.maximum(set_on, 0)]
        carried[set_on < first] = None if carried.dtype == object else np.nan
        state[name] = carried
    for name in flags:
        kept = pd.Series(changes[name].to_numpy(dtype=np.float64, na_value=0.0)[order]).groupby(codes).cummax()
        state[name] = kept.to_numpy(dtype=np.float32)
    return state[last_at_time].reset_index(drop=True)


def latest_activity(site_events: pd.DataFrame | None) -> pd.DataFrame:
    """The `latest_activity` table: the state after every site event."""
    return accumulate(activity_changes(site_events), ACTIVITY_COLUMNS)


def email_state(email_events: pd.DataFrame | None) -> pd.DataFrame:
    """The `email_state` table: the state after every event that stops email."""
    return accumulate(email_state_changes(email_events), (), EMAIL_FLAGS)


def current(table: pd.DataFrame) -> pd.DataFrame:
    """Each customer's last row."""
    return table.sort_values(TIME, kind="stable").drop_duplicates(KEY, keep="last").reset_index(drop=True)


def _empty_activity() -> pd.DataFrame:
    frame = pd.DataFrame({KEY: pd.Series(dtype=object), TIME: pd.Series(dtype="datetime64[us, UTC]")})
    for name in ACTIVITY_TIMES:
        frame[name] = pd.Series(dtype=np.float64)
    for name in ACTIVITY_TEXTS:
        frame[name] = pd.Series(dtype=object)
    return frame


def _empty_email_state() -> pd.DataFrame:
    frame = pd.DataFrame({KEY: pd.Series(dtype=object), TIME: pd.Series(dtype="datetime64[us, UTC]")})
    for name in (*EMAIL_FLAGS, *EMAIL_CONSENTS):
        frame[name] = pd.Series(dtype=np.float32)
    return frame


def with_schema(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """`frame` with the table's columns and types (an empty table still has them: Feast reads its schema)."""
    empty = _empty_activity() if table == ACTIVITY_TABLE else _empty_email_state()
    if not len(frame):
        return empty
    frame = frame.reset_index(drop=True).reindex(columns=empty.columns)
    for name in empty.columns:
        if frame[name].dtype != empty[name].dtype:
            frame[name] = frame[name].astype(empty[name].dtype)
    return frame


def arrow_table(frame: pd.DataFrame, table: str) -> pa.Table:
    """The table as its Parquet file stores it: the schema's types even for a column without a value (in an
    empty table, the customer ids as text: Feast's point-in-time join cannot compare a column of nulls with the
    entity's ids)."""
    fields = [pa.field(KEY, pa.string()), pa.field(TIME, pa.timestamp("us", tz="UTC"))]
    if table == ACTIVITY_TABLE:
        fields += [pa.field(name, pa.float64()) for name in ACTIVITY_TIMES]
        fields += [pa.field(name, pa.string()) for name in ACTIVITY_TEXTS]
    else:
        fields += [pa.field(name, pa.float32()) for name in (*EMAIL_FLAGS, *EMAIL_CONSENTS)]
    return pa.Table.from_pandas(with_schema(frame, table), schema=pa.schema(fields), preserve_index=False)
