"""Why a model cannot be trained, in one sentence: the facts (counts, dates) and the flag or data that fixes it.

`training.train` asks these only when a training set could not be built, and `sendwise train` / `pipeline`
print the sentence in their summary table, e.g. "none of 64,000 offer exposures has a closed 14-day conversion
window by 2008-03-17 15:00 UTC, the data's end; pass --as-of with the time the export was taken".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.build import FeatureTables
from sendwise.asof import AsOf, text
from sendwise.raw import load_table
from sendwise.settings import Settings
from training.datasets import MIN_EXAMPLES, window_ends

PASS_AS_OF = "pass --as-of with the time the export was taken"


def _as_of(tables: FeatureTables) -> AsOf:
    return AsOf(tables.as_of, tables.as_of_source)


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def _window_fix(as_of: AsOf, closes: pd.Series, what: str) -> str:
    """What would close enough windows: the export's real time (the data's end was assumed), or a later export."""
    needed = closes.sort_values().iloc[min(MIN_EXAMPLES, len(closes)) - 1]
    if as_of.source == "data":
        return f"{PASS_AS_OF} ({_plural(min(MIN_EXAMPLES, len(closes)), what)} are closed by {text(needed)})"
    return (
        f"{_plural(min(MIN_EXAMPLES, len(closes)), what)} are closed by {text(needed)}: ingest an export taken "
        "after that (or pass that --as-of if the export was taken later)"
    )


def _closing(
    n_total: int, closed: int, closes: pd.Series, window: str, as_of: AsOf, what: str, where: str
) -> str | None:
    """The sentence for too few closed windows, or None when enough are closed."""
    if n_total < MIN_EXAMPLES:
        return (
            f"only {_plural(n_total, what)} in the data (the minimum is {MIN_EXAMPLES:,}); "
            f"add more {where} history to the export"
        )
    if closed >= MIN_EXAMPLES:
        return None
    if closed == 0:
        fix = _window_fix(as_of, closes, what)
        return f"none of {n_total:,} {what}s has a closed {window} by {as_of.describe()}; {fix}"
    return (
        f"only {closed:,} of {n_total:,} {what}s have a closed {window} by {as_of.describe()} (the minimum is "
        f"{MIN_EXAMPLES:,}); {_window_fix(as_of, closes, what)}"
    )


def open_model(tables: FeatureTables, settings: Settings) -> str:
    """Why no open-propensity / send-time model: no email events, no sends, too few closed sends, one class."""
    sends = tables.sends
    if sends is None or len(sends) == 0 or "human_open" not in sends.columns:
        events = load_table(settings, "email_events")
        if events is None or events.empty:
            return "the data has no email_events: add the ESP's sends and opens (email_events) to the export"
        sent = events["event"].isin(["sent", "delivered"])
        if not sent.any():
            return (
                f"email_events has no sent or delivered events among its {len(events):,}, so there are no sends "
                "to learn opens from: add the sends to the export"
            )
        return (
            f"none of the {int(sent.sum()):,} sent or delivered events is of a customer who allows profiling "
            "(consent_profiling), and only their events are used for training"
        )
    as_of = _as_of(tables)
    sends = sends[sends["customer_id"].isin(tables.customers["customer_id"])]
    hidden = sends["proxied"].astype(bool) if "proxied" in sends.columns else pd.Series(False, index=sends.index)
    if len(sends) >= MIN_EXAMPLES and (~hidden).sum() < MIN_EXAMPLES:
        return (
            f"{int(hidden.sum()):,} of the {len(sends):,} sends went to recipients whose opens come through a "
            f"privacy proxy and say nothing of whether they read, leaving {int((~hidden).sum()):,} (the minimum "
            f"is {MIN_EXAMPLES:,}): add the sends of recipients whose own opens can be seen"
        )
    sends = sends[~hidden]
    hours = settings.label_window_hours
    closes = sends["send_at"] + pd.Timedelta(hours=hours)
    closed = sends[closes <= as_of.time]
    found = _closing(len(sends), len(closed), closes, f"{hours}-hour open window", as_of, "send", "email")
    if found is not None:
        return found
    opened = closed["human_open"].astype(bool)
    if not opened.any():
        return (
            f"none of the {len(closed):,} sends with a closed {hours}-hour window by {text(as_of.time)} was opened "
            "by a person (machine opens do not count): add the ESP's open and click events to the export"
        )
    if opened.all():
        return (
            f"every one of the {len(closed):,} sends with a closed {hours}-hour window by {text(as_of.time)} was "
            "opened, so there is nothing to tell apart: add the sends that were not opened to the export"
        )
    return f"{len(closed):,} sends with a closed {hours}-hour window, yet no training set could be built"


def _window_text(days: np.ndarray) -> str:
    low, high = float(np.min(days)), float(np.max(days))
    if low == high:
        return f"{low:g}-day conversion window"
    return f"conversion window ({low:g} to {high:g} days, by offer)"


def offer_model(tables: FeatureTables, settings: Settings) -> str:
    """Why no next-best-offer model: no offers, no exposures, too few closed exposures, no conversions."""
    if tables.offers is None or len(tables.offers) == 0:
        return (
            "the data has no offers table: add offers (offer_id, kind; a control offer for a holdout arm) and "
            "offer_events to the export"
        )
    exposures = tables.exposures
    if exposures is None or len(exposures) == 0:
        events = load_table(settings, "offer_events")
        if events is None or events.empty:
            return (
                "the data has no offer_events: add each offer shown (event exposed) and each conversion "
                "(converted) to the export"
            )
        exposed = events["event"] == "exposed"
        if not exposed.any():
            return (
                f"offer_events has no exposed events among its {len(events):,}: the model learns from exposures "
                "and the conversions that follow them, so add the exposures to the export"
            )
        return (
            f"none of the {int(exposed.sum()):,} offer exposures is of a customer who allows profiling "
            "(consent_profiling), and only their events are used for training"
        )
    known = exposures["offer_id"].isin(tables.offers["offer_id"]) & exposures["customer_id"].isin(
        tables.customers["customer_id"]
    )
    if not known.any():
        shown = ", ".join(sorted(map(str, exposures["offer_id"].unique()))[:3])
        return (
            f"none of the {len(exposures):,} offer exposures is of an offer in the offers table and a known "
            f"customer (exposed offers: {shown}): export the offers and customers the exposures name"
        )
    exposures = exposures[known]
    as_of = _as_of(tables)
    closes = window_ends(exposures, settings.conversion_window_days)
    closed = exposures[(closes <= as_of.time).to_numpy()]
    window = _window_text(((closes - exposures["exposed_at"]) / pd.Timedelta(days=1)).to_numpy())
    found = _closing(len(exposures), len(closed), closes, window, as_of, "offer exposure", "offer")
    if found is not None:
        return found
    converted = closed["converted"].astype(bool)
    if not converted.any():
        return (
            f"none of the {len(closed):,} offer exposures with a closed {window} by {text(as_of.time)} converted: "
            "the model needs converted offer_events (same customer and offer, inside the window)"
        )
    if converted.all():
        return (
            f"all of the {len(closed):,} offer exposures with a closed {window} by {text(as_of.time)} converted, "
            "so there is nothing to tell apart: add the exposures that did not convert to the export"
        )
    return f"{len(closed):,} offer exposures with a closed {window}, yet no training set could be built"
