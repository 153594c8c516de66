"""What the ingest derives from all the data then in the store: customers' time zones (from their country
or the hours they are active) and offers' missing margins."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from sendwise import timezones
from sendwise.ingest.parse import TIMESTAMP


def human_activity(email_events: pd.DataFrame | None, site_events: pd.DataFrame | None) -> pd.DataFrame:
    """Human activity in UTC: site sessions, and opens and clicks not flagged as machine opens."""
    return joined_activity([email_activity(email_events), site_activity(site_events)])


def email_activity(email_events: pd.DataFrame | None) -> pd.DataFrame | None:
    """The opens and clicks not flagged as machine opens: their customers and times (None without the table)."""
    if email_events is None:
        return None
    human = email_events["event"].isin(["open", "click"]) & ~email_events["machine_open"].fillna(False)
    return email_events.loc[human, ["customer_id", "occurred_at"]]


def site_activity(site_events: pd.DataFrame | None) -> pd.DataFrame | None:
    """The site sessions: their customers and times (None without the table)."""
    if site_events is None:
        return None
    return site_events.loc[site_events["event"] == "session_start", ["customer_id", "occurred_at"]]


def joined_activity(parts: list[pd.DataFrame | None]) -> pd.DataFrame:
    """The activity of each event table, one after the other, as ``human_activity`` gives it."""
    found = [part for part in parts if part is not None]
    if not found:
        return pd.DataFrame({"customer_id": pd.Series(dtype=object), "occurred_at": pd.Series(dtype=TIMESTAMP)})
    return pd.concat(found, ignore_index=True)


def without_inferred_zones(customers: pd.DataFrame) -> pd.DataFrame:
    """The customers as their zones are inferred again: only the given zones kept."""
    customers = customers.copy()
    customers["timezone"] = customers["timezone"].where(~customers["timezone_inferred"], None)
    return customers


def activity_hours(customers: pd.DataFrame) -> timezones.ActivityHours:
    """Where ``assign_timezones`` can gather the customers' activity a part at a time."""
    return timezones.ActivityHours(without_inferred_zones(customers))


def assign_timezones(
    customers: pd.DataFrame, activity: pd.DataFrame | timezones.ActivityHours, warnings: list[str]
) -> tuple[pd.DataFrame, Counter[str]]:
    """Customers with their zones inferred again where none was given; and how many zones came from where.
    ``activity`` is the human activity (``human_activity``), or its ``activity_hours`` gathered from the
    customers as they are here."""
    customers = without_inferred_zones(customers)
    zones, notes = timezones.infer_timezones(customers, activity)
    warnings.extend(notes)
    customers["timezone"] = zones["timezone"].astype(object)
    customers["timezone_inferred"] = (zones["source"] != timezones.TimezoneSource.GIVEN.value).to_numpy()
    return customers, Counter(zones["source"])


def impute_margins(offers: pd.DataFrame, offer_events: pd.DataFrame | None, warnings: list[str]) -> pd.DataFrame:
    """A missing margin is the offer's mean observed conversion value, else 1 (contract, offers)."""
    missing = offers["margin"].isna()
    if not missing.any():
        return offers
    observed = pd.Series(dtype=float)
    if offer_events is not None:
        conversions = offer_events.loc[(offer_events["event"] == "converted") & offer_events["value"].notna()]
        observed = conversions.groupby("offer_id")["value"].mean()
    offers = offers.copy()
    from_value = offers["offer_id"].map(observed).where(missing)
    offers["margin"] = offers["margin"].fillna(from_value).fillna(1.0)
    warnings.append(
        f"offers: {int(missing.sum()):,} offers have no margin; {int(from_value.notna().sum()):,} took "
        f"their mean observed conversion value, {int((missing & from_value.isna()).sum()):,} took 1"
    )
    return offers
