"""A batch's decisions as plain data in the shape of `DecideResponse`'s, from what the engine computed for the
whole batch at once (`Batch`).

What varies by row is turned into plain lists first (`_RowValues`, `_RankedOffers`: indexing numpy arrays one
element at a time is what made the per-recipient loop slow); the loop only picks from them and writes the
reasons. `decision_rows` makes the decisions of a range of the batch's rows, so that a big batch's answer can be
made, logged and encoded a piece at a time (`serving.engine`): its plain objects, not its arrays, are what a
decide holds most of.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property, lru_cache
from typing import NamedTuple

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from serving import reasons
from serving.assign import HourPlan
from serving.decision_log import LoggedHours, new_decision_ids
from serving.modules import (
    MAX_CATEGORIES,
    has_category_picks,
    offer_slots_batch,
    placed_offers,
    planned_modules,
)
from serving.offers import OfferSummary, rank_offers
from serving.online import BatchFeatures
from serving.reasons import HourReasons
from serving.schemas import Constraints, OfferScore, Recipient

OFFER_MODULES = ("hero_offer", "secondary_offers", "content_block")
"""The modules that carry offers: what a decision logs as shown (a no-repeat rule counts those)."""


@dataclass
class Population:
    """What an average known customer looks like to the models, for modules and reasons."""

    open_probability: float
    high_value_threshold: float


@dataclass
class Batch:
    """What one decide call computes for all its recipients at once."""

    start: datetime
    kind: str
    topic: str | None
    k_offers: int
    explore_share: float
    features: BatchFeatures
    curves: np.ndarray
    ranked: np.ndarray  # the curves with ties broken by the customer's rhythm: what hours are chosen from
    explore: np.ndarray
    plan: HourPlan
    blocked: list[str | None]
    holdout: np.ndarray
    constraints: Constraints
    zones: list[str]
    offers: pd.DataFrame
    offer_summaries: list[OfferSummary]
    conversion: np.ndarray
    value: np.ndarray
    control: np.ndarray
    excluded: list[np.ndarray]
    logged_values: bool = False
    """The offers' values are the logged ones (no offer model), the same for every row."""
    template: str = "promotional"
    """Which modules the emails get: `newsletter` ones or `promotional` ones (`serving.modules`)."""
    ranked_offers: list[list[str]] = field(default_factory=list)  # per decision: every offer ranked
    shown_offers: list[list[str]] = field(default_factory=list)  # per decision: those the email carries
    render_facts: list[dict[str, object] | None] = field(default_factory=list)  # per decision: what rendering needs

    @cached_property
    def ranking(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(offer columns of every row, best first; the incremental value over the control arm, if any)."""
        if self.offers.empty:
            return rank_offers(self.value, self.control, np.zeros(0, dtype=object), np.zeros(0), self.logged_values)
        kinds, margins = self.offers["kind"].to_numpy(), self.offers["margin"].to_numpy(dtype=np.float64)
        return rank_offers(self.value, self.control, kinds, margins, self.logged_values)

    def logged_hours(self, rows: slice) -> LoggedHours:
        """The window's start and the policy hour and allowed hours of each of `rows`, as the decision log keeps
        them."""
        plan = self.plan
        policy = np.where(plan.hours[rows] >= 0, plan.choice[rows], -1)
        return LoggedHours(self.start.isoformat(), policy.tolist(), plan.allowed_hours[rows].tolist())

    @property
    def window_times(self) -> list[tuple[str, str]]:
        """Each hour of the window as the answer writes it (JSON, Z) and as the decision log does (isoformat)."""
        return _window_times(self.start, self.curves.shape[1])


@lru_cache(maxsize=64)
def _window_times(start: datetime, hours: int) -> list[tuple[str, str]]:
    """Formatted once per window: 48 strftime/isoformat calls were 6% of a single-recipient decide. The list
    is shared by every batch of the window and never changed."""
    out = []
    for h in range(hours):
        at = start + timedelta(hours=h)
        out.append((at.strftime("%Y-%m-%dT%H:%M:%SZ"), at.isoformat()))
    return out


@dataclass(slots=True)
class _RowValues:
    """The hours, probabilities, history counts and flags of a range of a batch's rows (from `first`), as plain
    lists indexed from 0."""

    first: int
    curves: list[list[float]]
    chosen_hours: list[int]
    best_hours: list[int]
    chosen_p: list[float]
    best_p: list[float]
    mean_p: list[float]
    overall: list[int]
    overall_p: list[float]
    emails: list[int]
    opens: list[int]
    visits: list[int]
    clicks: list[int]
    hidden: list[int]
    known: list[bool]
    profiled: list[bool]
    consent: list[bool]
    eligible: list[bool]
    holdout: list[bool]
    explore: list[bool]
    propensity: list[float]
    categories: list[bool]
    views: list[dict[str, float]]
    zones: list[str]
    blocked: list[str | None]
    excluded: list[np.ndarray]
    interests: list[AbstractSet[str]]

    @classmethod
    def of(cls, batch: Batch, rows: slice) -> _RowValues:
        features, plan, curves = batch.features, batch.plan, batch.curves[rows]
        n = len(curves)
        everyone = np.arange(n)
        hours = curves.shape[1]
        engagement = features.engagement
        known = features.known[rows].tolist()
        chosen, best = plan.hours[rows], plan.best[rows]
        interests = list(features.matrix.interests[rows])
        return cls(
            first=rows.start or 0,
            curves=curves.tolist(),
            chosen_hours=chosen.tolist(),
            best_hours=best.tolist(),
            chosen_p=curves[everyone, np.maximum(chosen, 0)].tolist() if n else [],
            best_p=curves[everyone, np.maximum(best, 0)].tolist() if n else [],
            mean_p=curves.mean(axis=1).tolist() if hours else [0.0] * n,
            overall=batch.ranked[rows].argmax(axis=1).tolist() if hours else [0] * n,
            overall_p=curves.max(axis=1).tolist() if hours else [0.0] * n,
            emails=engagement["n_emails"][rows].tolist(),
            opens=engagement["n_human_opens"][rows].tolist(),
            visits=engagement["n_sessions"][rows].tolist(),
            clicks=engagement["n_clicks"][rows].tolist(),
            hidden=engagement["opens_hidden"][rows].tolist(),
            known=known,
            profiled=features.profiled[rows].tolist(),
            consent=features.consent[rows].tolist(),
            eligible=features.eligible[rows].tolist(),
            holdout=batch.holdout[rows].tolist(),
            explore=batch.explore[rows].tolist(),
            propensity=plan.propensity[rows].tolist(),
            categories=[
                has_category_picks(not k, batch.topic, list(row_interests), views)
                for k, row_interests, views in zip(known, interests, features.any_views[rows].tolist(), strict=True)
            ],
            views=_top_views(features, rows),
            zones=batch.zones[rows],
            blocked=batch.blocked[rows],
            excluded=batch.excluded[rows],
            interests=interests,
        )


def _top_views(features: BatchFeatures, rows: slice) -> list[dict[str, float]]:
    """The most viewed categories of each of `rows` (MAX_CATEGORIES of them, ties included) with their share of
    its product views: all that choosing category picks can read of the views, kept with the decision so that
    rendering it later picks the same categories."""
    snapshot = features.state.snapshot
    at, any_views = features.rows[rows], features.any_views[rows]
    n, width = len(at), len(snapshot.categories)
    found: list[dict[str, float]] = [NO_VIEWS] * n  # shared and never changed: a row with views gets its own
    if width == 0 or not any_views.any():
        return found
    views = np.where(any_views[:, None], snapshot.views[at], 0.0)
    keep = min(MAX_CATEGORIES, width)
    kth = -np.partition(-views, keep - 1, axis=1)[:, keep - 1]
    shares = views / np.maximum(views.sum(axis=1), 1e-30)[:, None]
    viewed, columns = np.nonzero((views > 0) & (views >= kth[:, None]))
    names = snapshot.categories
    for r, c, share in zip(viewed.tolist(), columns.tolist(), shares[viewed, columns].tolist(), strict=True):
        if found[r] is NO_VIEWS:
            found[r] = {}
        found[r][names[c]] = share
    return found


class LoggedRender(BaseModel):
    """What a decision to send keeps for rendering its email later (the decision log's `render`): the facts
    `choose_modules` reads, and the modules that were chosen from them. The ranked offers' ids are the log
    entry's `offer_ids`; their kinds and figures are lists in the same order."""

    template: str
    open_probability: float
    population_open_probability: float
    high_value_threshold: float
    offer_kinds: list[str]
    conversion: list[float]
    value: list[float]
    incremental: list[float] | None = None
    modules: list[tuple[str, list[str]]]
    category_views: dict[str, float] = Field(default_factory=dict)
    interests: list[str] = Field(default_factory=list)
    cold_start: bool = False
    history_emails: int = 0
    recipient: Recipient | None = None

    def offers(self, offer_ids: list[str]) -> list[OfferScore]:
        """The ranked offers as the decision's answer gave them (to LOGGED_DECIMALS)."""
        gains: list[float | None] = [*self.incremental] if self.incremental is not None else [None] * len(offer_ids)
        return [
            OfferScore(offer_id=o, kind=k, conversion_probability=p, expected_value=v, incremental_value=g)
            for o, k, p, v, g in zip(offer_ids, self.offer_kinds, self.conversion, self.value, gains, strict=True)
        ]


class _RowOffers(NamedTuple):
    """One decision's ranked offers: ids, kinds, the answer's objects, where the email places them (the hero's
    id or None, the secondary offers' and the content offers'), and their conversion probabilities, expected
    and incremental values rounded to LOGGED_DECIMALS (what the log keeps)."""

    ids: list[str]
    kinds: list[str]
    answer: list[dict[str, object]]
    slots: tuple[str | None, list[str], list[str]]
    logged: tuple[list[float], list[float], list[float] | None]


NO_VIEWS: dict[str, float] = {}
NONE: tuple[str, ...] = ()
LOGGED_DECIMALS = 6
"""The log keeps an offer's figures to a millionth: the reasons print two decimals, and the modules an email
shows are logged as they were chosen, never chosen again from the rounded figures."""


@dataclass(slots=True)
class _RankedOffers:
    """The top offers of a range of a batch's rows as flat lists (its row i's are [i * width, (i + 1) * width)),
    their answer objects made in one pass (a comprehension per recipient was a sixth of a campaign's decide),
    and where each row's offers go in the email, for the whole range at once."""

    width: int
    ids: list[str]
    kinds: list[str]
    answers: list[dict[str, object]]
    hero_ids: list[str | None]
    secondary_ids: list[str]
    secondary_at: list[int]
    content_ids: list[str]
    content_at: list[int]
    logged_p: list[float]
    logged_ev: list[float]
    logged_iv: list[float] | None

    @classmethod
    def of(cls, batch: Batch, template: str, threshold: float, rows: slice) -> _RankedOffers:
        order, incremental = batch.ranking
        order, value, conversion_all = order[rows], batch.value[rows], batch.conversion[rows]
        incremental = incremental[rows] if incremental is not None else None
        n = len(order)
        top = order[:, : max(batch.k_offers, 0)]
        width = top.shape[1]
        summaries = batch.offer_summaries
        offer_ids = np.array([s.offer_id for s in summaries] or [""], dtype=object)
        offer_kinds = np.array([s.kind for s in summaries] or [""], dtype=object)
        ids_2d, kinds_2d = offer_ids[top], offer_kinds[top]
        value_2d = np.take_along_axis(value, top, axis=1)
        ids, kinds = ids_2d.ravel().tolist(), kinds_2d.ravel().tolist()
        conversion_2d = np.take_along_axis(conversion_all, top, axis=1)
        gains_2d = np.take_along_axis(incremental, top, axis=1) if incremental is not None else None
        conversion = conversion_2d.ravel().tolist()
        gains = gains_2d.ravel().tolist() if gains_2d is not None else [None] * len(ids)
        answers: list[dict[str, object]] = [
            {
                "offer_id": offer_id,
                "kind": offer_kind,
                "conversion_probability": p,
                "expected_value": v,
                "incremental_value": g,
            }
            for offer_id, offer_kind, p, v, g in zip(
                ids, kinds, conversion, value_2d.ravel().tolist(), gains, strict=True
            )
        ]
        hero, secondary, content = offer_slots_batch(kinds_2d, value_2d, template, threshold)
        none = np.full(n, None, dtype=object)
        hero_ids = (
            np.where(hero >= 0, ids_2d[np.arange(n), np.maximum(hero, 0)], none).tolist() if width else [None] * n
        )
        return cls(
            width=width,
            ids=ids,
            kinds=kinds,
            answers=answers,
            hero_ids=hero_ids,
            secondary_ids=ids_2d[secondary].tolist(),
            secondary_at=[0, *np.cumsum(secondary.sum(axis=1)).tolist()],
            content_ids=ids_2d[content].tolist(),
            content_at=[0, *np.cumsum(content.sum(axis=1)).tolist()],
            logged_p=np.round(conversion_2d, LOGGED_DECIMALS).ravel().tolist(),
            logged_ev=np.round(value_2d, LOGGED_DECIMALS).ravel().tolist(),
            logged_iv=np.round(gains_2d, LOGGED_DECIMALS).ravel().tolist() if gains_2d is not None else None,
        )

    def row(self, i: int) -> _RowOffers:
        lo, hi = i * self.width, (i + 1) * self.width
        slots = (
            self.hero_ids[i],
            self.secondary_ids[self.secondary_at[i] : self.secondary_at[i + 1]],
            self.content_ids[self.content_at[i] : self.content_at[i + 1]],
        )
        logged = (
            self.logged_p[lo:hi],
            self.logged_ev[lo:hi],
            self.logged_iv[lo:hi] if self.logged_iv is not None else None,
        )
        return _RowOffers(self.ids[lo:hi], self.kinds[lo:hi], self.answers[lo:hi], slots, logged)


def _without(batch: Batch, i: int, left_out: set[int], template: str, threshold: float) -> _RowOffers:
    """Row i's ranking without the offers in `left_out` (columns), placed in the email from those left."""
    order, incremental = batch.ranking
    summaries = batch.offer_summaries
    columns = [j for j in order[i].tolist() if j not in left_out][: max(batch.k_offers, 0)]
    ids, kinds = [summaries[j].offer_id for j in columns], [summaries[j].kind for j in columns]
    values = [float(batch.value[i, j]) for j in columns]
    answer: list[dict[str, object]] = [
        {
            "offer_id": summaries[j].offer_id,
            "kind": summaries[j].kind,
            "conversion_probability": float(batch.conversion[i, j]),
            "expected_value": float(batch.value[i, j]),
            "incremental_value": float(incremental[i, j]) if incremental is not None else None,
        }
        for j in columns
    ]
    picked = np.array(columns, dtype=np.int64)
    logged = (
        np.round(batch.conversion[i, picked], LOGGED_DECIMALS).tolist(),
        np.round(batch.value[i, picked], LOGGED_DECIMALS).tolist(),
        np.round(incremental[i, picked], LOGGED_DECIMALS).tolist() if incremental is not None else None,
    )
    return _RowOffers(ids, kinds, answer, placed_offers(ids, kinds, values, template, threshold), logged)


class _Context(NamedTuple):
    """What every decision of a batch shares."""

    notes: list[str]
    template: str
    threshold: float
    population: float
    hour_reasons: HourReasons
    stamps: list[tuple[str, str]]
    logged_threshold: float
    """The threshold as the log keeps it: rounded like the offers' values, so that a value equal to it (the
    median best offer is some customer's best) stays equal to it (`logged_threshold`)."""


def logged_threshold(threshold: float) -> float:
    """`threshold` rounded as np.round rounds the logged values."""
    return float(np.round(np.float64(threshold), LOGGED_DECIMALS))


def decision_rows(
    batch: Batch, recipients: list[Recipient], notes: list[str], population: Population, part: slice | None = None
) -> list[dict[str, object]]:
    """The decisions of the batch's rows in `part` (default: all of them), in request order; the batch's
    `ranked_offers`, `shown_offers` and `render_facts` get theirs appended. `recipients` are the whole
    request's; `notes` the reasons every sent decision gives (how the models ranked, or why they could not).
    The decisions of one call share their ids' batch part (`new_decision_ids`)."""
    part = part if part is not None else slice(0, len(recipients))
    recipients = recipients[part]
    template = batch.template
    threshold = max(population.high_value_threshold, 0.0)
    rows = _RowValues.of(batch, part)
    offers = _RankedOffers.of(batch, template, threshold, part)
    hour_reasons = HourReasons(batch.start, batch.explore_share, batch.plan.capacity, batch.constraints.quiet_hours)
    context = _Context(
        notes,
        template,
        threshold,
        population.open_probability,
        hour_reasons,
        batch.window_times,
        logged_threshold(threshold),
    )
    ids = new_decision_ids(len(recipients))
    out: list[dict[str, object]] = []
    for i, recipient in enumerate(recipients):
        decision_id = ids[i]
        if rows.chosen_hours[i] >= 0:  # `plan_hours` gives an hour only to a recipient no rule stopped
            out.append(_sent(batch, rows, offers, context, i, recipient, decision_id))
            continue
        reason, scored = _why_not_sent(batch, rows, i)
        batch.ranked_offers.append([])
        batch.shown_offers.append([])
        batch.render_facts.append(None)
        curve = rows.curves[i] if scored else []
        out.append(_not_sent(recipient.customer_id, decision_id, reason, curve, rows.emails[i], rows.holdout[i]))
    return out


def _why_not_sent(batch: Batch, rows: _RowValues, i: int) -> tuple[str, bool]:
    """(why row i, which has no send hour, is not sent; whether its open probabilities are still given)."""
    if not rows.consent[i]:
        return reasons.NO_CONSENT, False
    if not rows.eligible[i]:
        return reasons.NOT_ELIGIBLE, True
    return rows.blocked[i] or reasons.no_room(batch.plan.capacity), True


def _not_sent(
    customer_id: str, decision_id: str, reason: str, curve: list[float], emails: int, holdout: bool
) -> dict[str, object]:
    return {
        "customer_id": customer_id,
        "decision_id": decision_id,
        "send": False,
        "send_at": None,
        "open_probability": None,
        "hourly_open_probability": curve,
        "explore": False,
        "propensity": 1.0,
        "offers": [],
        "modules": [],
        "cold_start": False,
        "history_emails": emails,
        "holdout": holdout,
        "reasons": [reason],
    }


def _prediction_basis(rows: _RowValues, i: int, recipient: Recipient, zone: str) -> str:
    """What row i's predictions rest on: similar customers, the population, or the customer's own history."""
    if not rows.known[i]:
        return reasons.unknown_customer(recipient.timezone)
    if not rows.profiled[i]:
        return reasons.NO_PROFILING
    return reasons.own_history(
        rows.emails[i], rows.opens[i], rows.visits[i], zone, rows.clicks[i], bool(rows.hidden[i])
    )


def _sent(
    batch: Batch,
    rows: _RowValues,
    offers: _RankedOffers,
    context: _Context,
    i: int,
    recipient: Recipient,
    decision_id: str,
) -> dict[str, object]:
    chosen, zone, chosen_p, emails = rows.chosen_hours[i], rows.zones[i], rows.chosen_p[i], rows.emails[i]
    cold, explore, holdout = not rows.known[i], rows.explore[i], rows.holdout[i]
    why = [_prediction_basis(rows, i, recipient, zone), *context.notes]
    if holdout:
        why.append(reasons.not_held_out(batch.kind))
    probabilities = (chosen_p, rows.best_p[i], rows.mean_p[i])
    why.extend(
        context.hour_reasons(
            zone, explore, chosen, rows.best_hours[i], probabilities, rows.overall[i], rows.overall_p[i]
        )
    )
    excluded = rows.excluded[i]
    if len(excluded):
        left_out = set(excluded.tolist())
        ranked = _without(batch, rows.first + i, left_out, context.template, context.threshold)
        names = [batch.offer_summaries[j].offer_id for j in sorted(left_out)]
        why.append(reasons.left_out(batch.constraints.no_repeat_offer_days, names))
    else:
        ranked = offers.row(i)
    if ranked.kinds and ranked.kinds[0] == "control":
        why.append(reasons.NO_OFFER_ADDS_VALUE)
    modules = planned_modules(
        context.template,
        *ranked.slots,
        cold_start=cold,
        history_emails=emails,
        open_probability=chosen_p,
        population_open_probability=context.population,
        has_categories=rows.categories[i],
        control_first=bool(ranked.kinds) and ranked.kinds[0] == "control",
    )
    batch.ranked_offers.append(ranked.ids)
    batch.shown_offers.append([item for name, items in modules if name in OFFER_MODULES for item in items])
    batch.render_facts.append(
        {
            "template": context.template,
            "open_probability": chosen_p,
            "population_open_probability": context.population,
            "high_value_threshold": context.logged_threshold,
            "offer_kinds": ranked.kinds,
            "conversion": ranked.logged[0],
            "value": ranked.logged[1],
            "incremental": ranked.logged[2],
            "modules": modules,
            "category_views": rows.views[i],
            "interests": sorted(interests) if (interests := rows.interests[i]) else NONE,
            "cold_start": cold,
            "history_emails": emails,
            "recipient": recipient.model_dump(exclude_defaults=True) if cold else None,
        }
    )
    return {
        "customer_id": recipient.customer_id,
        "decision_id": decision_id,
        "send": True,
        "send_at": context.stamps[chosen][0],
        "open_probability": chosen_p,
        "hourly_open_probability": rows.curves[i],
        "explore": explore,
        "propensity": rows.propensity[i],
        "offers": ranked.answer,
        "modules": [name for name, _ in modules],
        "cold_start": cold,
        "history_emails": emails,
        "holdout": holdout,
        "reasons": why,
    }
