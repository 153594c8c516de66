"""The Starbucks rewards-app offer data (simulated by Starbucks for a public exercise) in the data contract.

The source is three files: `portfolio.json` (10 offers), `profile.json` (17,000 customers) and
`transcript.json.gz` (offers received, viewed and completed, and transactions, with `time` in hours since the
start of the test).

What the adapter writes:
- `customers`: `customer_id` = the source `id`; `signup_at` = `became_member_on` (midnight UTC);
  `attr_gender` (`M`, `F`, `O` or missing), `attr_age` (118, the source's code for unknown, becomes missing),
  `attr_income` and `attr_tenure_days` (days from `became_member_on` to the start of the test).
- `offers`: the 10 offers: `bogo` and `discount` are kind `discount`, `informational` is kind `content`;
  `category` = the offer type; `discount_pct` = 100 × reward / difficulty (empty for informational offers);
  `price` = difficulty (the spend the offer asks for). Duration and channels have no contract column: the
  offer's id, a model feature, stands for them.
- `offer_events`: `offer received` = `exposed` (propensity 1/10), `offer viewed` = `clicked`, `offer completed`
  = `converted`; `event_id` = `sb-` + the source row number, so every source row stays one event (397
  completions are exact repeats of another row: the customer held two copies of the offer).
- `site_events`: every `transaction` is a `purchase` with `value` = amount.

Assumptions, for what the source does not say:
1. **Clock**: `time` 0 is `START`, 2018-07-27 00:00 UTC, the day after the latest `became_member_on`; the source
   has no calendar dates for its events. Times are whole multiples of 6 hours, so no hour-of-day question can
   be asked of this data.
2. **Time zone and country**: none given; both are left empty, so the ingest infers the zone, reports it, and
   with no session activity to go by it is UTC, marked inferred.
3. **Consent**: every customer may be emailed and profiled (`true`): they are members of the rewards app who
   received the offers, and the data is used for evaluation only.
4. **Propensity**: the offers were assigned uniformly at random, so each `exposed` event has propensity 1/10.
   The source does not say so; the counts agree (7,571 to 7,677 receipts per offer, about 12,700 per wave at
   every one of the six waves). Which customers receive an offer at a wave is not part of the decision being
   evaluated: the policy chooses which offer a customer who gets one receives.
5. **Conversion window**: the source records a completion only while the offer is valid (3 to 10 days), so
   the home's conversion window for this data should be the longest duration, 10 days
   (`SENDWISE_CONVERSION_WINDOW_DAYS=10`; training/realdata/starbucks.py sets it). With the default 7, completions of
   the two 10-day offers after their seventh day are not counted. A completion is a `converted` event without a
   value.
6. **Margin**: the source does not say what a completion is worth; the offers carry none and no conversion has
   a value, so the ingest gives every offer margin 1 (contract rule): a policy's value is its completion rate.
7. **No control arm**: every exposure is an offer (informational offers are content, not a holdout), so offers
   are ranked by expected value, not by value over sending none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sendwise.adapters import utc_times, write_tables

START = pd.Timestamp("2018-07-27T00:00:00Z")
UNKNOWN_AGE = 118
N_OFFERS = 10
PROPENSITY = 1.0 / N_OFFERS
CONVERSION_WINDOW_DAYS = 10
OFFER_EVENTS = {"offer received": "exposed", "offer viewed": "clicked", "offer completed": "converted"}
PORTFOLIO, PROFILE, TRANSCRIPT = "portfolio.json", "profile.json", "transcript.json.gz"


class StarbucksFormatError(ValueError):
    """The files are not the Starbucks offer data this adapter knows."""


def _read_lines(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise StarbucksFormatError(f"{path} is missing: expected {PORTFOLIO}, {PROFILE} and {TRANSCRIPT}")
    return pd.read_json(path, lines=True, dtype=False, compression="infer")


def read_portfolio(source_dir: Path) -> pd.DataFrame:
    portfolio = _read_lines(Path(source_dir) / PORTFOLIO)
    expected = {"id", "offer_type", "difficulty", "reward", "duration", "channels"}
    if not expected <= set(portfolio.columns):
        raise StarbucksFormatError(f"{Path(source_dir) / PORTFOLIO}: expected columns {sorted(expected)}")
    return portfolio


def read_transcript(source_dir: Path) -> pd.DataFrame:
    """The transcript with `offer_id`, `amount` and `reward` taken out of `value`, in source row order."""
    path = Path(source_dir) / TRANSCRIPT
    transcript = _read_lines(path)
    if not {"person", "event", "value", "time"} <= set(transcript.columns):
        raise StarbucksFormatError(f"{path}: expected columns person, event, value, time")
    values = transcript.pop("value")
    # the source spells the key "offer id" on receipts and views and "offer_id" on completions
    transcript["offer_id"] = [v.get("offer id", v.get("offer_id")) for v in values]
    transcript["amount"] = [v.get("amount", np.nan) for v in values]
    transcript["row"] = np.arange(len(transcript))
    unknown = sorted(set(transcript["event"]) - set(OFFER_EVENTS) - {"transaction"})
    if unknown:
        raise StarbucksFormatError(f"{path}: unknown event(s) {unknown}")
    return transcript


def _customers(source_dir: Path) -> pd.DataFrame:
    profile = _read_lines(Path(source_dir) / PROFILE)
    joined = pd.to_datetime(profile["became_member_on"].astype(str), format="%Y%m%d", utc=True)
    age = pd.to_numeric(profile["age"], errors="coerce").astype(float)
    return pd.DataFrame(
        {
            "customer_id": profile["id"].astype(str),
            "signup_at": utc_times(joined),
            "consent_email": True,
            "consent_profiling": True,
            "attr_gender": profile["gender"].astype(object).where(profile["gender"].notna(), None),
            "attr_age": age.where(age != UNKNOWN_AGE),
            "attr_income": pd.to_numeric(profile["income"], errors="coerce").astype(float),
            "attr_tenure_days": ((START - joined).dt.total_seconds() / 86400).astype(float),
        }
    )


def _offers(portfolio: pd.DataFrame) -> pd.DataFrame:
    difficulty = portfolio["difficulty"].astype(float)
    informational = portfolio["offer_type"] == "informational"
    return pd.DataFrame(
        {
            "offer_id": portfolio["id"].astype(str),
            "kind": np.where(informational, "content", "discount"),
            "category": portfolio["offer_type"].astype(str),
            "discount_pct": np.where(informational | (difficulty <= 0), np.nan, 100 * portfolio["reward"] / difficulty),
            "price": difficulty,
        }
    )


def _events(transcript: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    at = utc_times(START + pd.to_timedelta(transcript["time"].astype(float), unit="h"))
    event_id = "sb-" + transcript["row"].astype(str)
    offers = transcript["event"].isin(list(OFFER_EVENTS)).to_numpy()
    offer_events = pd.DataFrame(
        {
            "event_id": event_id[offers].to_numpy(),
            "customer_id": transcript.loc[offers, "person"].astype(str).to_numpy(),
            "offer_id": transcript.loc[offers, "offer_id"].astype(str).to_numpy(),
            "event": transcript.loc[offers, "event"].map(OFFER_EVENTS).to_numpy(),
            "occurred_at": at[offers].to_numpy(),
        }
    )
    offer_events["propensity"] = np.where(offer_events["event"] == "exposed", PROPENSITY, np.nan)
    spent = (transcript["event"] == "transaction").to_numpy()
    site_events = pd.DataFrame(
        {
            "event_id": event_id[spent].to_numpy(),
            "customer_id": transcript.loc[spent, "person"].astype(str).to_numpy(),
            "event": "purchase",
            "occurred_at": at[spent].to_numpy(),
            "value": transcript.loc[spent, "amount"].astype(float).to_numpy(),
        }
    )
    for frame in (offer_events, site_events):
        frame["occurred_at"] = utc_times(frame["occurred_at"])
    return offer_events, site_events


def to_contract(source_dir: Path, out_dir: Path, customers: int | None = None, seed: int = 42) -> dict[str, int]:
    """Write the Starbucks data as data-contract tables into `out_dir`; the row counts written, by table.

    `customers` keeps a seeded random sample of that many customers (all their events), for quick runs;
    None keeps everyone.
    """
    source_dir = Path(source_dir)
    portfolio = read_portfolio(source_dir)
    if len(portfolio) != N_OFFERS:
        raise StarbucksFormatError(f"{source_dir / PORTFOLIO}: expected {N_OFFERS} offers, found {len(portfolio)}")
    people = _customers(source_dir)
    transcript = read_transcript(source_dir)
    if customers is not None and customers < len(people):
        people = people.sample(n=customers, random_state=seed).sort_index().reset_index(drop=True)
        transcript = transcript[transcript["person"].isin(people["customer_id"])].reset_index(drop=True)
    offer_events, site_events = _events(transcript)
    tables = {
        "customers": people,
        "offers": _offers(portfolio),
        "offer_events": offer_events,
        "site_events": site_events,
    }
    return write_tables(tables, out_dir)
