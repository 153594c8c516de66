"""Who of a batch may be sent, at which hours, and which offers they may not be shown again: consent, the
global holdout, the frequency cap, quiet hours in local time and the no-repeat rule.

A rule that stops a recipient writes its reason in the batch's `blocked` list (None: not stopped); the first
rule that stops someone gives their reason. Where the hours go under a per-hour cap is `serving.assign`'s.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from serving import reasons
from serving.assign import local_window_clock, quiet
from serving.history import History
from serving.online import BatchFeatures
from serving.schemas import Constraints, FrequencyCap, QuietHours

HELD_OUT_KINDS = frozenset({"promotional", "newsletter"})
"""Marketing email whose lift the global holdout measures; triggered and transactional email is never held out."""
NO_CONSENT, NOT_ELIGIBLE = "no consent", "not eligible"
"""Markers of the recipients decisions answer in a shape of their own (`serving.decisions`)."""


def blocked_recipients(
    features: BatchFeatures,
    ids: list[str],
    start: datetime,
    kind: str,
    constraints: Constraints,
    holdout: np.ndarray,
    holdout_share: float,
    history: History,
) -> list[str | None]:
    """Why each recipient is not sent, or None: consent and eligibility first, then the holdout (marketing
    email only) and the frequency cap."""
    blocked: list[str | None] = [
        NO_CONSENT if not c else NOT_ELIGIBLE if not e else None
        for c, e in zip(features.consent.tolist(), features.eligible.tolist(), strict=True)
    ]
    if kind in HELD_OUT_KINDS:
        for i in np.flatnonzero(holdout):
            if blocked[i] is None:
                blocked[i] = reasons.in_holdout(holdout_share, kind)
    if constraints.frequency_cap is not None:
        _block_frequency(blocked, ids, start, constraints.frequency_cap, history)
    return blocked


def _block_frequency(
    blocked: list[str | None], ids: list[str], start: datetime, cap: FrequencyCap, history: History
) -> None:
    rows = [i for i, b in enumerate(blocked) if b is None]
    raw, decided = history.sends_before([ids[i] for i in rows], start, cap.days)
    for i, from_raw, from_log in zip(rows, raw, decided, strict=True):
        total = int(from_raw + from_log)
        if total >= cap.emails:
            blocked[i] = reasons.frequency_capped(total, from_raw, from_log, cap.emails, cap.days)


def allowed_hours(
    blocked: list[str | None], start: datetime, hours: int, zones: list[str], quiet_hours: QuietHours | None
) -> np.ndarray:
    """[n, hours]: the hours outside each recipient's local quiet hours; blocks those left with none."""
    if quiet_hours is None:
        return np.ones((len(zones), hours), dtype=bool)
    allowed = ~quiet(local_window_clock(start, hours, zones)[0], quiet_hours.start, quiet_hours.end)
    for i in np.flatnonzero(~allowed.any(axis=1)):
        if blocked[i] is None:
            blocked[i] = reasons.no_quiet_hour_left(quiet_hours, zones[i], hours)
    return allowed


def repeated_offers(
    ids: list[str],
    offers: pd.DataFrame,
    start: datetime,
    days: int | None,
    sendable: np.ndarray,
    history: History,
) -> list[np.ndarray]:
    """Per recipient, the columns of the (non-control) offers shown to them within `days` before `start`."""
    none = np.zeros(0, dtype=np.int64)
    if days is None or offers.empty:
        return [none] * len(ids)
    column = {str(o): j for j, o in enumerate(offers["offer_id"])}
    control = set(offers.loc[offers["kind"] == "control", "offer_id"].astype(str))
    rows = np.flatnonzero(sendable)
    shown = history.offers_shown_before([ids[i] for i in rows], start, days)
    excluded = [none] * len(ids)
    for i, seen in zip(rows, shown, strict=True):
        excluded[i] = np.array(sorted(column[o] for o in seen if o in column and o not in control), dtype=np.int64)
    return excluded
