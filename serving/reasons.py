"""Every sentence a decision, or the service's status, gives a person: why this hour, why no send, why these
offers. The decisions say what happened; this module says it in words, so the wording lives in one place.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from features.offer_values import OfferValues
from serving.assign import describe_quiet
from serving.schemas import QuietHours

LITTLE_HISTORY_EVENTS = 5
"""Fewer recent visits and opens than this: the rhythm is mostly the prior of the customer's time zone."""

# --- why a recipient is not sent ------------------------------------------------------------------------------
NO_CONSENT = "no email consent: never scheduled, rendered or offered anything"
NOT_ELIGIBLE = "no longer eligible for sends: unsubscribed, complained or hard-bounced"


def in_holdout(share: float, kind: str) -> str:
    return (
        f"in the global holdout ({share:.1%} of customers, chosen stably by customer id): "
        f"never sent {kind} email, so that the realized lift of sending can be measured"
    )


def frequency_capped(total: int, from_raw: int, from_log: int, emails: int, days: int) -> str:
    return (
        f"frequency cap reached: {total} emails in the {days} days before the window "
        f"({from_raw} sent per the ESP's events, {from_log} decided by sendwise since they end), "
        f"cap {emails} in {days} days"
    )


def no_quiet_hour_left(quiet: QuietHours, zone: str, hours: int) -> str:
    return f"quiet hours {describe_quiet(quiet.start, quiet.end)} in {zone} leave no hour of the {hours}-hour window"


def no_room(capacity: int | None) -> str:
    return (
        f"per-hour cap: at most {capacity} of this batch's sends per hour, and every allowed hour of the window is full"
    )


# --- what a prediction rests on -------------------------------------------------------------------------------
NO_PROFILING = "profiling consent not given: population-level predictions only"
NO_OPEN_MODEL = "no open model trained yet: a flat population prior, every hour alike"


def unknown_customer(timezone: str | None) -> str:
    return (
        "unknown customer: no history of their own; open probability from similar customers (the context given: "
        "time zone, interests, attributes), send time from the daily rhythm of customers in "
        + (timezone if timezone else "UTC (no time zone given)")
    )


def own_history(emails: int, opens: int, visits: int, zone: str, clicks: int = 0, hidden: bool = False) -> str:
    """How much of the customer's own history the prediction rests on (decayed counts, rounded)."""
    if hidden:
        reason = (
            "this customer's opens come through a privacy proxy and say nothing of whether they read: the "
            f"prediction rests on {emails} past emails, {clicks} clicks and {visits} site visits of theirs"
        )
        reads = clicks
    else:
        reads = opens
        reason = (
            f"prediction rests on {emails} past emails, {opens} human opens and {visits} site visits of this customer"
        )
    if visits + reads < LITTLE_HISTORY_EVENTS:
        reason += f" (little history: the send time leans on the daily rhythm of customers in {zone})"
    return reason


def not_held_out(kind: str) -> str:
    return f"in the global holdout, but {kind} email is never held out"


# --- why this hour --------------------------------------------------------------------------------------------
class HourReasons:
    """Why each recipient of one batch gets their hour: the best (allowed) one, an exploration, or where the
    per-hour cap moved the send. What the batch's sentences share is worked out once."""

    def __init__(self, start: datetime, explore_share: float, capacity: int | None, quiet: QuietHours | None) -> None:
        self.start = start
        self.explore_share = explore_share
        self.capacity = capacity
        self.quiet = describe_quiet(quiet.start, quiet.end) if quiet is not None else None
        self.approximate = capacity is not None and explore_share > 0

    def __call__(
        self,
        zone: str,
        explored: bool,
        chosen: int,
        best: int,
        probabilities: tuple[float, float, float],
        overall: int,
        overall_p: float,
    ) -> list[str]:
        """`chosen`, `best` and `overall` are hours of the window: the one given, the best allowed, the best of
        all; `probabilities` the open probability at the chosen hour, at the best allowed hour, and on average."""
        chosen_p, best_p, mean_p = probabilities
        outside = f" outside quiet hours {self.quiet} ({zone} time)" if self.quiet is not None else ""
        reasons = []
        if explored:
            reasons.append(
                f"exploration: a random hour{outside} for {self.explore_share:.0%} of recipients, to keep learning"
            )
        elif chosen == best:
            reasons.append(
                f"best hour of the window{outside}: {best_p:.1%} open probability vs {mean_p:.1%} on average"
            )
            if overall != best:
                reasons.append(
                    f"the best hour of all, {self.start + timedelta(hours=overall):%H:00} UTC ({overall_p:.1%}), "
                    "is quiet"
                )
        else:
            at = self.start + timedelta(hours=chosen)
            was = self.start + timedelta(hours=best)
            reasons.append(
                f"moved by the per-hour cap (at most {self.capacity} of this batch's sends per hour) from "
                f"{was:%Y-%m-%d %H:00} UTC ({best_p:.1%}) to {at:%Y-%m-%d %H:00} UTC ({chosen_p:.1%}): "
                f"costs {100 * (best_p - chosen_p):.2f} points of open probability"
            )
        if self.approximate:
            reasons.append(
                "propensity approximate: under the per-hour cap the hour the policy gives depends on the batch"
            )
        return reasons


# --- why these offers -----------------------------------------------------------------------------------------
NO_OFFER_ADDS_VALUE = "no offer adds value over sending none for this customer"
NO_OFFERS_IN_DATA = "no offers in the data: ingest an offers table to have offers ranked"
NO_OFFER_ELIGIBLE = "no offer is eligible for this window: each is outside its dates, out of stock or not asked for"


def left_out(days: int | None, offer_ids: list[str]) -> str:
    return f"left out, shown to this customer in the {days} days before the window: {', '.join(offer_ids)}"


def logged_ranking(values: OfferValues | None) -> str:
    """How offers are ranked without an offer model, in plain words."""
    if values is None:
        return (
            "offers are ranked by margin (what a conversion is worth): the home has no table of what each offer "
            "earned in the logged data (`sendwise pipeline` or `sendwise train` builds it)"
        )
    if values.exposures == 0:
        return (
            "offers are ranked by margin (what a conversion is worth): no offer exposure in the logged data has "
            "a closed conversion window, and conversion probabilities are unknown (given as 0)"
        )
    if values.conversions == 0:
        return (
            f"offers are ranked by margin (what a conversion is worth): none of the {values.exposures:,} logged "
            "offer exposures converted"
        )
    how = "inverse-propensity weighted, shrunk toward the mean" if values.weighted else "shrunk toward the mean"
    return (
        f"offers are ranked by what each earned per exposure in the logged data ({how}; {values.exposures:,} "
        f"exposures, {values.conversions:,} conversions)"
    )


def without_offer_model(values: OfferValues | None, eligible_ids: list[str]) -> list[str]:
    """Why offers are ranked as they are when no offer model is trained."""
    notes = [f"no offer model is trained yet, so {logged_ranking(values)}"]
    unseen = values.never_exposed(eligible_ids) if values else []
    if unseen:
        notes.append(f"never exposed in the logged data, so given the mean over offers: {', '.join(unseen)}")
    return notes


# --- the service's status -------------------------------------------------------------------------------------
NO_FEATURE_STORE = "no feature store in the home: run `sendwise pipeline --data DIR`"


def no_champion(name: str, offer_values: OfferValues | None) -> str:
    if name == "next_best_offer":
        return f"no champion for {name}: {logged_ranking(offer_values)}"
    return f"no champion for {name}: answers use population priors"


def features_unavailable(error: Exception) -> str:
    return f"online features unavailable: {type(error).__name__}: {error}"


def decided_not_to_send(decision_id: str) -> str:
    return f"decision {decision_id} was not to send this customer an email: there is nothing to render"


def changed_since_decision(decision_id: str) -> str:
    return f"the customer's consent or eligibility changed since decision {decision_id}: no email"


def rendered_decision(decision_id: str, decided_at: datetime) -> str:
    return f"the email of decision {decision_id}, made {decided_at:%Y-%m-%d %H:%M} UTC: no new decision"


def offers_unread(where: str) -> str:
    return (
        f"offers unavailable: their features could not be read from the Redis online store at {where} when this "
        "replica started, so no offer is ranked; they are read with the first decision Redis answers"
    )
