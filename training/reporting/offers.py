"""The offers section: the mix sendwise would send now, the value it adds over the control arm, and what its
policy would have earned on the exposures the data logged (off-policy, with intervals).

The mix is the offer each recipient's decision would rank first (`training.reporting.audience`: the engine's
ranking, by value over the control arm where the catalog has one, so a control arm first means "no offer").

The off-policy estimates read the closed exposures of the offer champion's held-out window (its run's
`valid_start` on), each with the propensity the logging policy showed its offer with. They are scored by the
booster training fit before that window and kept with the run (`training.train.HELD_OUT_MODEL`, the one
promotion judged): the registered booster was refit on those exposures too, and scoring them with it read
about a tenth higher on a simulated world. sendwise's policy is the engine's ranking over the offers eligible
at each exposure; the reward is the margin of a conversion inside the offer's window. IPS, SNIPS and DR
(`training.offpolicy`) give its value per offer shown with 95% intervals, clustered by customer; differences
against the logging policy (its observed value) and against always sending the control arm are paired on the
same exposures.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.build import _exposures as logged_exposures
from features.store import open_store
from features.transform import OfferMatrix, customer_matrix, offer_design
from serving.curves import predict
from serving.offers import rank_offers
from training import offpolicy
from training.datasets import historical_features, window_closed
from training.reporting.audience import Audience, OfferChoice
from training.reporting.inputs import NO_AUDIENCE, Champion, ReportInputs
from training.reporting.plots import value_bars
from training.reporting.site import PLOTS, Section, number, percent
from training.train import HELD_OUT_MODEL

LEVEL = 0.95
PER = 1000
"""Values are told per this many emails (or offers shown)."""
NO_OFFER = "no offer (the control arm ranks first)"
MIN_UNITS = 200
MAX_UNITS = 20_000
"""Held-out exposures the estimates read at most (whole customers, drawn with the seed)."""


@dataclass(frozen=True)
class MixRow:
    label: str
    kind: str
    category: str
    share: float
    mean_value: float
    """Mean expected value (conversion probability × margin) of the recipients it is first for."""


@dataclass(frozen=True)
class Mix:
    recipients: int
    offers: list[MixRow]
    kinds: list[MixRow]
    chosen_value: float
    """Mean expected value of the top-ranked offer, per recipient."""
    control_value: float | None
    """Mean expected value of the control arm (what customers bring without an offer); None without one."""
    added: float | None
    """Mean value over the control arm of the top-ranked offer (0 where the control arm is first)."""
    ranked_by_model: bool


@dataclass(frozen=True)
class Estimate:
    """One policy value (per offer shown), its interval and the estimator."""

    estimator: str
    value: float
    low: float
    high: float

    @classmethod
    def of(cls, value: offpolicy.PolicyValue) -> Estimate:
        return cls(value.estimator, value.value, value.low, value.high)


@dataclass(frozen=True)
class OffPolicy:
    units: int
    held_out_model: bool
    """Scored by the champion's booster fit before the window (else by the registered one, which saw it)."""
    customers: int
    first: pd.Timestamp
    last: pd.Timestamp
    matched: int
    """Exposures where sendwise's choice is the offer the logging policy showed."""
    logged: Estimate
    sendwise: list[Estimate]
    control: list[Estimate]
    over_logged: list[Estimate]
    over_control: list[Estimate]


def _label(offer: pd.Series) -> str:
    title = offer.get("title")
    return str(title) if isinstance(title, str) and title.strip() else str(offer["offer_id"])


def offer_mix(choice: OfferChoice) -> Mix:
    """Shares of recipients per offer and per kind, with the values they bring."""
    n = len(choice.top)
    rows = np.arange(n)
    chosen = choice.value[rows, choice.top]
    is_control = np.isin(choice.top, choice.control)
    offers = []
    for j, offer in choice.offers.iterrows():
        first = choice.top == j
        if not first.any():
            continue
        control = j in set(choice.control.tolist())
        offers.append(
            MixRow(
                label=NO_OFFER if control else _label(offer),
                kind="no offer" if control else str(offer["kind"]),
                category="" if control or pd.isna(offer.get("category")) else str(offer.get("category")),
                share=float(first.mean()),
                mean_value=float(chosen[first].mean()),
            )
        )
    offers.sort(key=lambda r: -r.share)
    kinds = pd.Series(np.where(is_control, "no offer", choice.offers["kind"].to_numpy()[choice.top]))
    kind_rows = [
        MixRow(str(k), str(k), "", float((kinds == k).mean()), float(chosen[(kinds == k).to_numpy()].mean()))
        for k in kinds.value_counts().index
    ]
    control_value = added = None
    if len(choice.control) and choice.incremental is not None:
        control_value = float(choice.value[:, choice.control].max(axis=1).mean())
        added = float(choice.incremental[rows, choice.top].mean())
    return Mix(n, offers, kind_rows, float(chosen.mean()), control_value, added, choice.ranked_by_model)


def _eligible_at(offers: pd.DataFrame, times: pd.Series) -> np.ndarray:
    """[units, offers]: whether each offer was inside its dates at each unit's time."""
    at = times.to_numpy(dtype="datetime64[ns]")[:, None]
    ok = np.ones((len(times), len(offers)), dtype=bool)
    for column, before in (("starts_at", True), ("ends_at", False)):
        if column not in offers.columns:
            continue
        bound = offers[column].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")[None, :]
        known = ~np.isnat(bound)
        ok &= ~known | ((bound <= at) if before else (bound > at))
    return ok


def _logging_target(logged: offpolicy.LoggedData) -> np.ndarray:
    """The logging policy as a stochastic target: its own propensity on the logged offer (the rest spread
    evenly). Its IPS weights are all 1, so its IPS value is the observed mean reward, with the same clustered
    interval as every other estimate, and paired differences against it are well defined."""
    n, k = len(logged), logged.n_actions
    matrix = np.repeat(((1 - logged.propensities) / max(k - 1, 1))[:, None], k, axis=1)
    matrix[np.arange(n), logged.actions] = logged.propensities
    return matrix


def held_out_exposures(inputs: ReportInputs, found: Champion, as_of: pd.Timestamp) -> tuple[pd.DataFrame, str]:
    """The closed exposures with a propensity in the champion's held-out window (at most `MAX_UNITS`, all of a
    customer's or none), or an empty frame and why."""
    settings = inputs.settings
    offers, events, customers = inputs.table("offers"), inputs.table("offer_events"), inputs.table("customers")
    if offers is None or events is None or customers is None or events.empty:
        return pd.DataFrame(), "the data has no offer exposures"
    params = found.run.data.params if found.run is not None else {}
    if "valid_start" not in params:
        return pd.DataFrame(), "the offer champion's run does not record its held-out window"
    cut = pd.Timestamp(params["valid_start"])
    cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut.tz_convert("UTC")
    exposures = logged_exposures(events, settings.conversion_window_days, offers)
    exposures = exposures[
        window_closed(exposures, as_of, settings.conversion_window_days)
        & (exposures["exposed_at"] >= cut).to_numpy()
        & exposures["offer_id"].isin(offers["offer_id"]).to_numpy()
        & exposures["customer_id"].isin(customers["customer_id"]).to_numpy()
        & (pd.to_numeric(exposures["propensity"], errors="coerce") > 0).to_numpy()
    ].reset_index(drop=True)
    if len(exposures) < MIN_UNITS:
        return pd.DataFrame(), (
            f"{len(exposures)} closed exposures with a propensity from the champion's held-out window "
            f"({cut:%Y-%m-%d %H:%M} UTC) on; at least {MIN_UNITS} are needed"
        )
    if len(exposures) > MAX_UNITS:  # whole customers, so that the clustered intervals stay right
        people = exposures["customer_id"].drop_duplicates().sample(frac=1.0, random_state=settings.seed)
        counts = exposures["customer_id"].value_counts().loc[people.to_numpy()].cumsum()
        kept = set(counts.index[counts <= MAX_UNITS])
        exposures = exposures[exposures["customer_id"].isin(kept)].reset_index(drop=True)
    return exposures, ""


def scoring_booster(inputs: ReportInputs, found: Champion) -> tuple[lgb.Booster, bool]:
    """The champion's booster fit before its held-out window, kept with its run (True), else the registered
    one (False: runs trained before training kept it)."""
    path = inputs.run_artifact(found, HELD_OUT_MODEL)
    if path is None:
        return found.booster, False
    return lgb.Booster(model_file=str(path)), True


def offpolicy_values(inputs: ReportInputs, found: Champion, audience: Audience) -> tuple[OffPolicy | None, str]:
    """The estimates over the held-out window's exposures, or None and why not."""
    exposures, why = held_out_exposures(inputs, found, audience.as_of)
    if exposures.empty:
        return None, why
    offers = inputs.table("offers")
    catalog = audience.engine.catalog
    if offers is None or catalog.offer_features is None or audience.engine.store is None:
        return None, "the Feast store has no offer features"
    store = open_store(inputs.settings)  # the engine's serves online only; the exposures are read offline
    offers = offers.reset_index(drop=True)
    inputs.status("scoring the logged offer exposures")
    entity = pd.DataFrame(
        {
            "customer_id": exposures["customer_id"],
            "offer_id": exposures["offer_id"],
            "event_timestamp": exposures["exposed_at"],
        }
    )
    matrix = customer_matrix(historical_features(store, "next_best_offer_v1", entity))
    n = len(exposures)
    every = OfferMatrix.from_rows(catalog.offer_features.set_index("offer_id").loc[offers["offer_id"]].reset_index())
    k = len(every)
    at = pd.Series(np.repeat(exposures["exposed_at"].to_numpy(), k))  # the latest values as they were then
    pairs = offer_design(matrix, np.repeat(np.arange(n), k), every, np.tile(np.arange(k), n), at)
    booster, held_out = scoring_booster(inputs, found)
    conversion = predict(booster, pairs[booster.feature_name()]).reshape(n, k)
    margins = np.asarray(every.margin, dtype=np.float64)
    kinds = np.asarray(every.kind, dtype=object)
    value = conversion * margins[None, :]
    ranked_value = np.where(_eligible_at(offers, exposures["exposed_at"]), value, -1e9)
    control = np.flatnonzero(kinds == "control")
    target = np.asarray(rank_offers(ranked_value, control, kinds, margins, False)[0][:, 0])
    action = pd.Index(offers["offer_id"]).get_indexer(exposures["offer_id"])
    logged = offpolicy.LoggedData(
        actions=action,
        propensities=pd.to_numeric(exposures["propensity"]).to_numpy(dtype=np.float64),
        rewards=exposures["converted"].to_numpy(dtype=np.float64) * margins[action],
        n_actions=k,
        groups=exposures["customer_id"].to_numpy(dtype=object),
    )
    mine = offpolicy.evaluate(logged, target, value, LEVEL)
    observed = offpolicy.ips(logged, _logging_target(logged), LEVEL)
    always_control = offpolicy.evaluate(logged, np.full(n, control[0]), value, LEVEL) if len(control) else {}
    return (
        OffPolicy(
            units=n,
            held_out_model=held_out,
            customers=int(exposures["customer_id"].nunique()),
            first=exposures["exposed_at"].min(),
            last=exposures["exposed_at"].max(),
            matched=int((target == action).sum()),
            logged=Estimate.of(observed),
            sendwise=[Estimate.of(v) for v in mine.values()],
            control=[Estimate.of(v) for v in always_control.values()],
            over_logged=[Estimate.of(offpolicy.difference(mine[e], observed)) for e in ("IPS", "SNIPS")],
            over_control=[Estimate.of(offpolicy.difference(mine[e], always_control[e])) for e in always_control],
        ),
        "",
    )


def offers_section(inputs: ReportInputs) -> Section | None:
    found = inputs.champions.get("next_best_offer")
    if found is None:
        return None
    audience = inputs.audience
    if audience is None or len(audience) == 0:
        return Section.unavailable("offers", "Offers", NO_AUDIENCE)
    notes: list[str] = []
    mix = None
    choice = audience.offer_choice
    if choice is None:
        notes.append("no offer of the catalog is eligible when the data ends: no mix to show")
    else:
        mix = offer_mix(choice)
    estimates, why = offpolicy_values(inputs, found, audience)
    if estimates is None:
        notes.append(f"no off-policy estimate: {why}")
    images = []
    chart = None
    if mix is not None:
        path = value_bars(
            inputs.plots_dir / "offers-mix.png",
            [r.label for r in mix.offers],
            [r.share for r in mix.offers],
            "share of recipients it is ranked first for (%)",
        )
        chart = f"{PLOTS}/{path.name}"
        images.append(chart)
    summary = []
    if mix is not None:
        top = mix.offers[0]
        summary.append(f"The offer ranked first most often: {top.label} ({percent(top.share)} of recipients).")
        if mix.added is not None:
            summary.append(
                f"Expected margin added over the control arm: {number(PER * mix.added, 1)} per {PER:,} emails."
            )
    if estimates is not None:
        ips = next(e for e in estimates.sendwise if e.estimator == "IPS")
        summary.append(
            f"On {estimates.units:,} logged exposures, sendwise's policy would have earned "
            f"{number(PER * ips.value, 1)} per {PER:,} offers shown (IPS), against "
            f"{number(PER * estimates.logged.value, 1)} logged."
        )
    return Section(
        slug="offers",
        title="Offers",
        summary=summary or notes,
        template="offers.html.j2",
        context={"mix": mix, "estimates": estimates, "chart": chart, "per": PER, "level": LEVEL},
        images=images,
        notes=notes,
    )
