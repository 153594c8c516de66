"""Kevin Hillstrom's MineThatData E-Mail Analytics challenge (2008) in the data contract.

The source is one CSV row per customer: eight customer columns, the arm the customer was randomized to
(`segment`: `Mens E-Mail`, `Womens E-Mail`, `No E-Mail`) and three outcomes over the two weeks after the send
(`visit`, `conversion`, `spend`). It is a real randomized experiment, so the arms are offers with a known
propensity and `No E-Mail` is a control arm.

What the adapter writes:
- `customers`: one row per source row, `customer_id` = `hs-` + the 1-based row number (the file has no ids,
  and a row number identifies nobody); `attr_recency`, `attr_history`, `attr_mens`, `attr_womens`,
  `attr_zip_code`, `attr_newbie`, `attr_channel` as given (`history_segment` is left out: it is `history`
  binned).
- `offers`: the three arms: `mens-email` and `womens-email` (kind `content`, category `mens` / `womens`: the
  emails showed merchandise, not a discount) and `no-email` (kind `control`).
- `offer_events`: an `exposed` event for every customer at the send time, for the customer's arm, with
  propensity 1/3; a `converted` event for every customer who visited, with `value` = spend (0 for a visit
  without a purchase).
- `site_events`: a `purchase` for every customer who bought, with `value` = spend, at the visit's time.

Assumptions, for what the source does not say:
1. **Send time**: the file has no dates. Every email (and every control exposure) went out at `SEND_TIME`,
   2008-03-03 15:00 UTC, an arbitrary instant in the spring the challenge was published.
2. **Time zone**: none given. Customers get `country = US` (a US retailer: the file's zip-code classes) and no
   `timezone`, so the ingest infers one and reports it; with no activity to go by it is UTC, marked inferred.
   No hour-of-day question can be asked of this data.
3. **Signup time**: unknown; `signup_at` is left empty (`newbie` says whether the customer is new in the last
   12 months and is kept as an attribute).
4. **Consent**: every customer may be emailed (`consent_email = true`: they were all eligible for the
   experiment, the control arm was held out, not opted out) and profiled (`consent_profiling = true`: the data
   is used for evaluation only).
5. **Propensity**: 1/3 for each arm: the source says the customers were split at random into three equal
   arms, and the arm counts (21,307 / 21,387 / 21,306) agree.
6. **Event times inside the label window**: the source only says a visit happened within two weeks of the
   send. The contract counts a conversion within 7 days of the exposure, so each visit is placed at a
   uniformly drawn time (seeded) in the first 7 days; a purchase at the same time as the visit. Every visit of
   the source is therefore a conversion in the contract; nothing is lost, and nothing is read from the times.
   The data ends with the two-week window (`SEND_TIME` + 14 days, the features' `as_of` in
   training/realdata/hillstrom.py).
7. **Outcomes**: a visit is the conversion (`converted`), spend is its value; `conversion` (bought) is the
   `purchase` site event. The contract has one conversion per exposure, so expected spend is worked out apart
   (training/realdata/hillstrom.py: visit probability × the arm's mean spend per visit).
8. **Margin**: the offers carry none, so the ingest gives each the mean observed conversion value (the mean
   spend per visit of that arm), as the contract says.
9. **Spelling**: `zip_code` `Surburban` is read as `Suburban`.

The plain export (`to_plain_export`) is the same experiment written as a shop and an ESP would export it after
the fact, with nothing squeezed into a label window and no as-of anywhere in the files: the user says when the
export was taken (`sendwise pipeline --data DIR --as-of TIME`). It differs from `to_contract` in:
- `offers` carry `conversion_window_days = 14`, the experiment's outcome window;
- a visit is a `session_start` site event and a bought item (`conversion`) is a `converted` offer event with
  `value` = spend, plus a `purchase` site event with the same value and time, so the offer model learns
  conversions (purchases), not visits;
- **event times**: each visit at a seeded uniform time, whole minutes, from one hour after the send to two
  hours before the two weeks end; a purchase 1 to 59 minutes after its visit (every buyer visited). No event
  falls in the last hour of the two weeks, so without `--as-of` the data's end (the hour after the latest
  event) is before the 14-day windows close, as for any export whose last event is not the end of its windows;
- `customers` may be a subset (`rows`), so that half of the file can be ingested and the other half decided as
  customers the home does not know.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sendwise.adapters import utc_times, write_tables

SEND_TIME = pd.Timestamp("2008-03-03T15:00:00Z")
VISIT_WINDOW = pd.Timedelta(days=7)
OUTCOME_DAYS = 14
PLAIN_FIRST_MINUTE = 60
PLAIN_LAST_MINUTE = OUTCOME_DAYS * 24 * 60 - 120
"""Visits of the plain export fall between one hour after the send and two hours before the two weeks end."""
ARMS = {"Mens E-Mail": "mens-email", "Womens E-Mail": "womens-email", "No E-Mail": "no-email"}
CONTROL_OFFER = "no-email"
PROPENSITY = 1.0 / 3.0
ATTRIBUTES = ("recency", "history", "mens", "womens", "zip_code", "newbie", "channel")
SOURCE_COLUMNS = (*ATTRIBUTES, "segment", "visit", "conversion", "spend")


class HillstromFormatError(ValueError):
    """The CSV is not the Hillstrom file this adapter knows."""


def read_source(csv_path: Path) -> pd.DataFrame:
    """The Hillstrom CSV, checked: every expected column, known arms, 0/1 outcomes."""
    csv_path = Path(csv_path)
    frame = pd.read_csv(csv_path)
    missing = [c for c in SOURCE_COLUMNS if c not in frame.columns]
    if missing:
        raise HillstromFormatError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected {SOURCE_COLUMNS}")
    unknown = sorted(set(frame["segment"]) - set(ARMS))
    if unknown:
        raise HillstromFormatError(f"{csv_path}: column segment has unknown arm(s) {unknown}; expected {list(ARMS)}")
    for column in ("visit", "conversion"):
        if not frame[column].isin([0, 1]).all():
            raise HillstromFormatError(f"{csv_path}: column {column} must be 0 or 1")
    frame["customer_id"] = [f"hs-{i:05d}" for i in range(1, len(frame) + 1)]
    frame["offer_id"] = frame["segment"].map(ARMS)
    frame["zip_code"] = frame["zip_code"].replace({"Surburban": "Suburban"})
    return frame


def customers_table(source: pd.DataFrame) -> pd.DataFrame:
    """The contract's customers of the rows of `source`: the Hillstrom columns as `attr_*`."""
    customers = pd.DataFrame(
        {
            "customer_id": source["customer_id"],
            "country": "US",
            "consent_email": True,
            "consent_profiling": True,
        }
    )
    for name in ATTRIBUTES:
        values = source[name]
        customers[f"attr_{name}"] = values.astype(float) if pd.api.types.is_numeric_dtype(values) else values
    return customers


def _offers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "offer_id": ["mens-email", "womens-email", "no-email"],
            "kind": ["content", "content", "control"],
            "category": ["mens", "womens", None],
        }
    )


def _visit_times(n: int, seed: int) -> pd.Series:
    """Seeded times inside the contract's 7-day conversion window (assumption 6), whole minutes."""
    rng = np.random.default_rng(seed)
    minutes = rng.integers(60, int(VISIT_WINDOW.total_seconds() // 60), size=n)
    return utc_times(SEND_TIME + pd.to_timedelta(minutes, unit="min"))


def _events(source: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(source)
    exposed = pd.DataFrame(
        {
            "event_id": source["customer_id"] + "-exposed",
            "customer_id": source["customer_id"],
            "offer_id": source["offer_id"],
            "message_id": np.where(source["offer_id"] == CONTROL_OFFER, None, "msg-" + source["customer_id"]),
            "event": "exposed",
            "occurred_at": utc_times(pd.Series([SEND_TIME] * n)),
            "value": np.nan,
            "propensity": PROPENSITY,
        }
    )
    visit_at = _visit_times(n, seed)
    visited = (source["visit"] == 1).to_numpy()
    converted = pd.DataFrame(
        {
            "event_id": source.loc[visited, "customer_id"].to_numpy() + "-visit",
            "customer_id": source.loc[visited, "customer_id"].to_numpy(),
            "offer_id": source.loc[visited, "offer_id"].to_numpy(),
            "message_id": exposed.loc[visited, "message_id"].to_numpy(),
            "event": "converted",
            "occurred_at": visit_at[visited].to_numpy(),
            "value": source.loc[visited, "spend"].to_numpy(dtype=float),
            "propensity": np.nan,
        }
    )
    bought = (source["conversion"] == 1).to_numpy()
    purchases = pd.DataFrame(
        {
            "event_id": source.loc[bought, "customer_id"].to_numpy() + "-purchase",
            "customer_id": source.loc[bought, "customer_id"].to_numpy(),
            "event": "purchase",
            "occurred_at": visit_at[bought].to_numpy(),
            "value": source.loc[bought, "spend"].to_numpy(dtype=float),
        }
    )
    offer_events = pd.concat([exposed, converted], ignore_index=True)
    offer_events["occurred_at"] = utc_times(offer_events["occurred_at"])
    purchases["occurred_at"] = utc_times(purchases["occurred_at"])
    return offer_events, purchases


def to_contract(csv_path: Path, out_dir: Path, seed: int = 42) -> dict[str, int]:
    """Write the Hillstrom file as data-contract tables into `out_dir`; the row counts written, by table.

    `seed` draws the visit times inside the conversion window (assumption 6 of the module docstring); nothing
    downstream depends on them.
    """
    source = read_source(csv_path)
    offer_events, purchases = _events(source, seed)
    tables = {
        "customers": customers_table(source),
        "offers": _offers(),
        "offer_events": offer_events,
        "site_events": purchases,
    }
    return write_tables(tables, out_dir)


def outcomes(csv_path: Path) -> pd.DataFrame:
    """Per customer of the contract: the arm (offer id), `visit`, `conversion` and `spend`, from the source.

    The evaluation reads the two-week outcomes from here, not back from the contract's 7-day window, so they
    are the experiment's own figures.
    """
    source = read_source(csv_path)
    return source[["customer_id", "offer_id", "visit", "conversion", "spend"]].copy()


def _plain_offers() -> pd.DataFrame:
    return _offers().assign(conversion_window_days=float(OUTCOME_DAYS))


def plain_export_tables(source: pd.DataFrame, seed: int = 42) -> dict[str, pd.DataFrame]:
    """The rows of `source` (as `read_source` returns them) as a plain export's tables (module docstring)."""
    source = source.reset_index(drop=True)
    n = len(source)
    rng = np.random.default_rng(seed)
    visit_minute = rng.integers(PLAIN_FIRST_MINUTE, PLAIN_LAST_MINUTE, size=n)
    purchase_minute = visit_minute + rng.integers(1, 60, size=n)
    visit_at = utc_times(SEND_TIME + pd.to_timedelta(visit_minute, unit="min"))
    purchase_at = utc_times(SEND_TIME + pd.to_timedelta(purchase_minute, unit="min"))
    ids = source["customer_id"].to_numpy(dtype=object)
    message = np.asarray(np.where(source["offer_id"] == CONTROL_OFFER, None, "msg-" + source["customer_id"]), object)
    exposed = pd.DataFrame(
        {
            "event_id": ids + "-exposed",
            "customer_id": ids,
            "offer_id": source["offer_id"].to_numpy(),
            "message_id": message,
            "event": "exposed",
            "occurred_at": utc_times(pd.Series([SEND_TIME] * n)),
            "value": np.nan,
            "propensity": PROPENSITY,
        }
    )
    bought = (source["conversion"] == 1).to_numpy()
    spend = source["spend"].to_numpy(dtype=float)
    converted = pd.DataFrame(
        {
            "event_id": ids[bought] + "-converted",
            "customer_id": ids[bought],
            "offer_id": source.loc[bought, "offer_id"].to_numpy(),
            "message_id": message[bought],
            "event": "converted",
            "occurred_at": purchase_at[bought].to_numpy(),
            "value": spend[bought],
            "propensity": np.nan,
        }
    )
    visited = (source["visit"] == 1).to_numpy() | bought
    sessions = pd.DataFrame(
        {
            "event_id": ids[visited] + "-visit",
            "customer_id": ids[visited],
            "event": "session_start",
            "occurred_at": visit_at[visited].to_numpy(),
            "value": np.nan,
        }
    )
    purchases = pd.DataFrame(
        {
            "event_id": ids[bought] + "-purchase",
            "customer_id": ids[bought],
            "event": "purchase",
            "occurred_at": purchase_at[bought].to_numpy(),
            "value": spend[bought],
        }
    )
    offer_events = pd.concat([exposed, converted], ignore_index=True)
    offer_events["occurred_at"] = utc_times(offer_events["occurred_at"])
    site_events = pd.concat([sessions, purchases], ignore_index=True)
    site_events["occurred_at"] = utc_times(site_events["occurred_at"])
    return {
        "customers": customers_table(source),
        "offers": _plain_offers(),
        "offer_events": offer_events,
        "site_events": site_events,
    }


def to_plain_export(csv_path: Path, out_dir: Path, rows: np.ndarray | None = None, seed: int = 42) -> dict[str, int]:
    """Write the Hillstrom file (or its `rows`, 0-based) as a plain export taken after the fact into `out_dir`:
    exposures at the send, visits and purchases over the two weeks after it, offers with their 14-day window,
    and no as-of (module docstring). Returns the row counts written, by table."""
    source = read_source(csv_path)
    if rows is not None:
        source = source.iloc[np.sort(np.asarray(rows))]
    return write_plain_export(source, out_dir, seed)


def write_plain_export(source: pd.DataFrame, out_dir: Path, seed: int = 42) -> dict[str, int]:
    """`to_plain_export` of rows already read (`read_source`): the tables written, their row counts."""
    return write_tables(plain_export_tables(source, seed), out_dir)
