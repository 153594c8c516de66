"""From the run's rows to files: the shop's and the email sender's exports in the data contract, and the truth.

The exports are what `sendwise ingest` reads: customers.csv (comma-separated, with a byte-order mark),
campaigns.csv, offers.csv (semicolons), email events as monthly Parquet parts, site and offer events as
Parquet, each with its deliberate dirt (`sendwise.simulator.dirt`). The truth (`OUT_DIR/truth/`) adds to
`World.save` who made every open and click, and every message with its true probabilities.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sendwise.simulator import dirt
from sendwise.simulator.options import Rates
from sendwise.simulator.records import (
    CLICK,
    EMAIL_COLUMNS,
    HUMAN,
    MESSAGE_COLUMNS,
    MPP_UA,
    OFFER_COLUMNS,
    OFFER_EVENTS,
    OPEN,
    PRODUCTS_PER_CATEGORY,
    SITE_COLUMNS,
    USER_AGENTS,
    iso,
)
from sendwise.simulator.run import Run
from sendwise.simulator.sender import offer_content
from sendwise.simulator.truth import CATEGORIES, World


@dataclass
class Tables:
    """A world's exports (dirt included) and the truth tables of its events."""

    customers_csv: pd.DataFrame
    campaigns_csv: pd.DataFrame
    offers_csv: pd.DataFrame
    email_events: pa.Table
    site_events: pa.Table
    offer_events: pa.Table
    opens: pd.DataFrame
    clicks: pd.DataFrame
    messages: pd.DataFrame


def assemble(run: Run, dirt_rng: np.random.Generator) -> Tables:
    """The tables of a finished run: events before its end, in time order, with the dirt from `dirt_rng`."""
    world, end_s = run.world, run.end_s
    params = world.customer_params
    customer_ids = params["customer_id"].to_numpy(dtype=object)
    campaign_ids = run.campaigns["campaign_id"].to_numpy(dtype=object)
    offer_ids = world.offer_params["offer_id"].to_numpy(dtype=object)

    email = _before(run.email.columns(EMAIL_COLUMNS), end_s)
    email = _take(email, np.lexsort((email["ev"], email["msg"], email["t"])))
    email["event_id"] = np.arange(1, len(email["t"]) + 1)
    opens = _events_truth(email, customer_ids, OPEN)
    clicks = _events_truth(email, customer_ids, CLICK)
    email_table = _email_table(email, customer_ids, campaign_ids, run.campaigns, dirt_rng, run.rates)

    site = _before(run.site.rows.columns(SITE_COLUMNS), end_s)
    site = _take(site, np.argsort(site["t"], kind="stable"))
    site_table = _site_table(site, customer_ids, dirt_rng, run.rates)

    offer = _before(run.offer.columns(OFFER_COLUMNS), end_s)
    offer = _take(offer, np.lexsort((offer["ev"], offer["t"])))
    offer_table = _offer_table(offer, customer_ids, offer_ids, dirt_rng, run.rates)

    return Tables(
        customers_csv=dirt.dirty_customers(_customers_csv(params), params, dirt_rng),
        campaigns_csv=dirt.dirty_campaigns(_campaigns_csv(run.campaigns)),
        offers_csv=_offers_csv(world.offer_params),
        email_events=email_table,
        site_events=site_table,
        offer_events=offer_table,
        opens=opens,
        clicks=clicks,
        messages=_messages_truth(run, customer_ids, campaign_ids, offer_ids),
    )


def _before(columns: dict[str, np.ndarray], end_s: float) -> dict[str, np.ndarray]:
    keep = columns["t"] < end_s
    return {k: v[keep] for k, v in columns.items()}


def _take(columns: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[order] for k, v in columns.items()}


def format_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """`prefix` + numbers zero-padded to `width` digits, as a string array."""
    digits = pc.utf8_lpad(pa.array(np.asarray(numbers, dtype=np.int64)).cast(pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _strings(values: np.ndarray, codes: np.ndarray) -> pa.Array:
    """values[codes] as a string array, null where the code is negative."""
    codes = np.asarray(codes, dtype=np.int64)
    return pa.array(list(values), type=pa.string()).take(pa.array(codes, mask=codes < 0))


def _timestamps(seconds: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    micros = np.round(np.nan_to_num(seconds) * 1e6).astype(np.int64)
    return pa.array(micros, type=pa.timestamp("us", tz="UTC"), mask=null)


# --- the event exports ---------------------------------------------------------------------------------------
def _email_table(
    email: dict[str, np.ndarray],
    customer_ids: np.ndarray,
    campaign_ids: np.ndarray,
    campaigns: pd.DataFrame,
    rng: np.random.Generator,
    rates: Rates,
) -> pa.Table:
    n = len(email["t"])
    names, name_code = dirt.email_event_names(email["ev"], rng, rates)
    landing = "https://shop.example.com/" + campaigns["topic"].fillna("home")
    urls = (landing + "?utm_campaign=" + campaigns["campaign_id"]).to_numpy()
    flag = email["flag"]
    columns = {
        "event_id": format_ids("ee-", email["event_id"], 9),
        "customer_id": _strings(customer_ids, email["c"]),
        "message_id": format_ids("m-", email["msg"], 8),
        "campaign_id": _strings(campaign_ids, email["camp"]),
        "event": _strings(np.array(names, dtype=object), name_code),
        "occurred_at": _timestamps(email["t"]),
        "machine_open": pa.array(flag == 1, mask=flag < 0),
        "bounce_type": _strings(np.array(["hard", "soft"], dtype=object), email["bounce"]),
        "user_agent": _strings(np.array(USER_AGENTS, dtype=object), email["ua"]),
        "url": _strings(urls, np.where(email["ev"] == CLICK, email["camp"], -1)),
        "decision_id": pa.nulls(n, pa.string()),
    }
    return dirt.dirty_events(pa.table(columns), dirt.EMAIL_DIRT, rates.duplicate_email_rows, len(customer_ids), rng)


def _site_table(
    site: dict[str, np.ndarray], customer_ids: np.ndarray, rng: np.random.Generator, rates: Rates
) -> pa.Table:
    n = len(site["t"])
    names, name_code = dirt.site_event_names(site["ev"], rng, rates)
    product_ids = np.array(
        [f"p-{c}-{j:03d}" for c in CATEGORIES for j in range(1, PRODUCTS_PER_CATEGORY + 1)], dtype=object
    )
    value = site["value"]
    table = pa.table(
        {
            "event_id": dirt.without_some_ids(format_ids("se-", np.arange(1, n + 1), 9), rng),
            "customer_id": _strings(customer_ids, site["c"]),
            "event": _strings(np.array(names, dtype=object), name_code),
            "occurred_at": _timestamps(site["t"]),
            "category": _strings(np.array(CATEGORIES, dtype=object), site["cat"]),
            "product_id": _strings(product_ids, site["product"]),
            "value": pa.array(value, mask=np.isnan(value)),
        }
    )
    return dirt.dirty_events(table, dirt.SITE_DIRT, rates.duplicate_other_rows, len(customer_ids), rng)


def _offer_table(
    offer: dict[str, np.ndarray],
    customer_ids: np.ndarray,
    offer_ids: np.ndarray,
    rng: np.random.Generator,
    rates: Rates,
) -> pa.Table:
    n = len(offer["t"])
    value, propensity = offer["value"], offer["propensity"]
    table = pa.table(
        {
            "event_id": format_ids("oe-", np.arange(1, n + 1), 8),
            "customer_id": _strings(customer_ids, offer["c"]),
            "offer_id": _strings(offer_ids, offer["o"]),
            "message_id": format_ids("m-", offer["msg"], 8),
            "event": _strings(np.array(OFFER_EVENTS, dtype=object), offer["ev"]),
            "occurred_at": _timestamps(offer["t"]),
            "value": pa.array(value, mask=np.isnan(value)),
            "propensity": pa.array(propensity, mask=np.isnan(propensity)),
            "decision_id": pa.nulls(n, pa.string()),
        }
    )
    return dirt.dirty_events(table, dirt.OFFER_DIRT, rates.duplicate_other_rows, len(customer_ids), rng)


# --- the truth of the events --------------------------------------------------------------------------------
def _events_truth(email: dict[str, np.ndarray], customer_ids: np.ndarray, event: int) -> pd.DataFrame:
    """Every open (or click) in the data with who made it: a person, the privacy proxy or a scanner.

    `via_proxy`: a person's own open that arrived through the proxy (a proxied recipient of a realistic world).
    """
    rows = email["ev"] == event
    source = np.where(email["source"][rows] < 0, HUMAN, email["source"][rows])
    return pd.DataFrame(
        {
            "event_id": format_ids("ee-", email["event_id"][rows], 9).to_pandas(),
            "message_id": format_ids("m-", email["msg"][rows], 8).to_pandas(),
            "customer_id": customer_ids[email["c"][rows]],
            "occurred_at": pd.to_datetime(np.round(email["t"][rows] * 1e6).astype(np.int64), unit="us", utc=True),
            "is_machine": source != HUMAN,
            "source": np.array(["human", "mpp", "scanner"], dtype=object)[source],
            "via_proxy": (source == HUMAN) & (email["ua"][rows] == MPP_UA),
        }
    )


def _messages_truth(
    run: Run, customer_ids: np.ndarray, campaign_ids: np.ndarray, offer_ids: np.ndarray
) -> pd.DataFrame:
    m = run.messages.columns(MESSAGE_COLUMNS)
    campaigns = run.campaigns
    offer = m["o"].astype(np.int64)
    return pd.DataFrame(
        {
            "message_id": format_ids("m-", m["msg"], 8).to_pandas(),
            "customer_id": customer_ids[m["c"].astype(np.int64)],
            "campaign_id": campaign_ids[m["camp"].astype(np.int64)],
            "kind": campaigns["kind"].to_numpy()[m["camp"].astype(np.int64)],
            "topic": campaigns["topic"].to_numpy()[m["camp"].astype(np.int64)],
            "sent_at": pd.to_datetime(np.round(m["t"] * 1e6).astype(np.int64), unit="us", utc=True),
            "sends_in_prev_7d": m["sends7"].astype(np.int64),
            "delivered": m["delivered"].astype(bool),
            "open_probability": m["p_open"].astype(np.float64),
            "human_open_72h": m["human"].astype(bool),
            "offer_id": pd.Series(offer_ids[np.maximum(offer, 0)]).where(offer >= 0, None),
            "propensity": m["propensity"].astype(np.float64),
            "conversion_probability": m["p_conv"].astype(np.float64),
            "converted_7d": m["converted"].astype(bool),
            # Whole microseconds, as every other time here: pandas' float path rounds under an overflow trap
            # that failed on NaN rows in a long test run (the same values passed in a fresh process).
            "last_visit_at": pd.Series(_timestamps(m["last_visit"], np.isnan(m["last_visit"])).to_pandas()),
        }
    )


# --- the shop's tables --------------------------------------------------------------------------------------
def _iso_local(stamps: pd.Series, zones: pd.Series) -> pd.Series:
    """ISO 8601 with the customer's own UTC offset (e.g. 2026-03-04T10:15:00+01:00)."""
    out = iso(stamps)
    for zone, rows in zones.groupby(zones).groups.items():
        local = stamps[rows].dt.tz_convert(zone).dt.strftime("%Y-%m-%dT%H:%M:%S%z")
        out[rows] = local.str[:-2] + ":" + local.str[-2:]
    return out


def _customers_csv(params: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": params["customer_id"],
            "timezone": params["timezone_in_data"],
            "country": params["country"],
            "signup_at": iso(params["signup_at"]),
            "consent_email": np.where(params["consent_email"], "true", "false"),
            "consent_profiling": np.where(params["consent_profiling"], "true", "false"),
            "interests": params["interests"],
            "updated_at": _iso_local(params["updated_at"], params["timezone"]),
            "attr_loyalty_tier": params["attr_loyalty_tier"],
            "attr_age_band": params["attr_age_band"],
            "attr_account_type": params["attr_account_type"],
        }
    )


def _campaigns_csv(campaigns: pd.DataFrame) -> pd.DataFrame:
    frame = campaigns[["campaign_id", "kind", "topic", "subject", "created_at"]].copy()
    frame["created_at"] = iso(frame["created_at"])
    return frame


def _offers_csv(offers: pd.DataFrame) -> pd.DataFrame:
    frame = offers[["offer_id", "kind", "category", "discount_pct", "price", "margin", "inventory"]].copy()
    frame["inventory"] = frame["inventory"].astype("Int64")
    frame["starts_at"] = iso(offers["starts_at"])
    frame["ends_at"] = iso(offers["ends_at"])
    return pd.concat([frame, offer_content(offers)], axis=1)


# --- the files ------------------------------------------------------------------------------------------------
def write(out_dir: Path, world: World, tables: Tables) -> dict[str, int]:
    """Write the data files and the truth; returns rows written per table."""
    # customers.csv: comma-separated with a byte-order mark (as spreadsheet exports write it); offers.csv uses
    # semicolons, so the ingest detects both delimiters on every simulated world.
    tables.customers_csv.to_csv(out_dir / "customers.csv", index=False, encoding="utf-8-sig")
    tables.campaigns_csv.to_csv(out_dir / "campaigns.csv", index=False, encoding="utf-8")
    tables.offers_csv.to_csv(out_dir / "offers.csv", sep=";", index=False, encoding="utf-8")
    parts_dir = out_dir / "email_events"
    parts_dir.mkdir(exist_ok=True)
    for old in parts_dir.glob("part-*.parquet"):
        old.unlink()
    for month, part in _monthly_parts(tables.email_events):
        pq.write_table(part, parts_dir / f"part-{month}.parquet")
    pq.write_table(tables.site_events, out_dir / "site_events.parquet")
    pq.write_table(tables.offer_events, out_dir / "offer_events.parquet")
    world.save(out_dir)
    truth_dir = out_dir / "truth"
    pq.write_table(pa.Table.from_pandas(tables.opens, preserve_index=False), truth_dir / "email_opens.parquet")
    pq.write_table(pa.Table.from_pandas(tables.clicks, preserve_index=False), truth_dir / "email_clicks.parquet")
    pq.write_table(pa.Table.from_pandas(tables.messages, preserve_index=False), truth_dir / "messages.parquet")
    return {
        "customers": len(tables.customers_csv),
        "campaigns": len(tables.campaigns_csv),
        "offers": len(tables.offers_csv),
        "email_events": tables.email_events.num_rows,
        "site_events": tables.site_events.num_rows,
        "offer_events": tables.offer_events.num_rows,
    }


def _monthly_parts(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """Split by UTC month of occurred_at (a row without one goes with the row before it)."""
    micros = pd.Series(table.column("occurred_at").cast(pa.int64()).to_pandas()).ffill().bfill()
    months = micros.fillna(0).to_numpy(np.int64).astype("datetime64[us]").astype("datetime64[M]").astype(str)
    for month in dict.fromkeys(months):
        yield month, table.filter(pa.array(months == month))
