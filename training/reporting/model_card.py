"""The model cards: for each champion, what it was trained on, how well it did beside simple baselines, and
what it cannot know.

Figures come from the champion's MLflow run (its data window, sizes, held-out metrics, the baselines training
logged beside them and the promotion decision) and, for the limits, from the customers sendwise could email
now (`training.reporting.audience`) and the raw store's sends:
- recipients behind a privacy proxy, whose opens cannot be seen (their open propensity rests on clicks, visits,
  purchases and attributes);
- exploration: how many of the sends the models learned from were sendwise's randomized explorations (the
  decision log says which), and how many went out away from the usual hour, which is what lets a model tell
  hours apart;
- cold start: recipients without history of their own (no profiling consent, or no email or visit yet), who
  get their time zone's rhythm and the population's patterns.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.transform import SCALAR_FEATURES
from serving.decision_log import INDEX_FILE, DecisionLog
from training.reporting.audience import Audience
from training.reporting.inputs import Champion, ReportInputs
from training.reporting.site import Section, percent
from training.train import BASELINE_TAG, off_schedule_mask

EXPLORATION_LOOKUPS = 5000
"""Decisions read back from the log to tell the exploration share (a seeded sample beyond this many sends)."""


@dataclass(frozen=True)
class MetricRow:
    name: str
    value: float
    baselines: list[tuple[str, float]]
    reading: str


@dataclass(frozen=True)
class Card:
    champion: Champion
    window: list[tuple[str, str]]
    sizes: list[tuple[str, str]]
    metrics: list[MetricRow]
    promotion: str | None
    facts: list[tuple[str, str]]
    limits: list[str] = field(default_factory=list)


def _number(metrics: dict[str, float], key: str) -> float:
    value = metrics.get(key)
    return float(value) if value is not None else float("nan")


def _previous_champion(inputs: ReportInputs, found: Champion) -> float | None:
    """The score of the champion this one replaced, on the same held-out window (from promotion.json)."""
    record = inputs.run_artifact(found, "promotion.json")
    if record is None:
        return None
    decisions = json.loads(record.read_text(encoding="utf-8")).get("promotions", [])
    for decision in decisions:
        if decision.get("name") == found.name and decision.get("champion_score") is not None:
            return float(decision["champion_score"])
    return None


def metric_rows(inputs: ReportInputs, found: Champion) -> list[MetricRow]:
    metrics = found.run.data.metrics if found.run is not None else {}
    tags = found.run.data.tags if found.run is not None else {}
    auc_baselines = [("a random order", 0.5)]
    if not math.isnan(_number(metrics, "baseline_valid_auc")):
        auc_baselines.append((tags.get(BASELINE_TAG, "a simple rule"), _number(metrics, "baseline_valid_auc")))
    previous = _previous_champion(inputs, found)
    if previous is not None:
        auc_baselines.append(("the champion it replaced, same window", previous))
    rows = [
        MetricRow(
            "AUC on the held-out window",
            _number(metrics, "valid_auc"),
            auc_baselines,
            "how well it orders people from least to most likely (1 is perfect, 0.5 is chance)",
        ),
        MetricRow(
            "log loss on the held-out window",
            _number(metrics, "valid_logloss"),
            [("everyone at the earlier part's rate", _number(metrics, "baseline_valid_logloss"))],
            "how far its probabilities are from what happened (lower is better)",
        ),
        MetricRow(
            "calibration: mean predicted / observed",
            _number(metrics, "valid_calibration"),
            [("perfectly calibrated", 1.0)],
            "whether its probabilities are right on average (1 is exact)",
        ),
    ]
    if found.name == "send_time" and "valid_off_schedule_auc" in metrics:
        rows.insert(
            1,
            MetricRow(
                "AUC on sends away from the usual hour",
                _number(metrics, "valid_off_schedule_auc"),
                [("a random order", 0.5)],
                "how well it orders sends made at other hours than the most common one: what choosing an hour needs",
            ),
        )
    return rows


def _logged(log: DecisionLog, decisions_dir: Path, decision_id: str) -> dict[str, object] | None:
    """A send's logged decision, or None (not in the log, or an id sendwise did not make)."""
    try:
        found = log.find(decisions_dir, decision_id)
    except ValueError:  # not one of sendwise's ids
        return None
    return None if found is None else found.entry


def _exploration(inputs: ReportInputs) -> list[str]:
    settings = inputs.settings
    sends = inputs.sends
    if sends is None or sends.empty:
        return ["Exploration: the data has no sends."]
    off = off_schedule_mask(sends["send_at"]).mean() if len(sends) else 0.0
    lines = [
        f"Exploration: {percent(float(off))} of the {len(sends):,} sends in the data went out away from the most "
        "common hour; those are what let the model tell hours apart."
    ]
    decided = sends["decision_id"].dropna().astype(str)
    index = settings.decisions_dir / INDEX_FILE
    if decided.empty:
        lines.append(
            "None of the sends carries a sendwise decision, so none was a sendwise exploration: the hours were the "
            "sender's own. Set SENDWISE_EXPLORE_SHARE (now "
            f"{settings.explore_share:g}) or a request's explore_share to keep learning about other hours."
        )
    elif index.exists():
        picked = decided.sample(n=min(len(decided), EXPLORATION_LOOKUPS), random_state=settings.seed)
        log = DecisionLog()
        found = [entry for entry in (_logged(log, settings.decisions_dir, d) for d in picked) if entry is not None]
        explored = sum(bool(e.get("explore")) for e in found)
        share = explored / len(found) if found else float("nan")
        lines.append(
            f"{percent(len(decided) / len(sends))} of the sends carry a sendwise decision; of those found in the "
            f"decision log, {percent(share)} were explorations (configured share {settings.explore_share:g})."
        )
    else:
        lines.append(
            f"{percent(len(decided) / len(sends))} of the sends carry a sendwise decision, but this home has no "
            "decision log to say which were explorations."
        )
    return lines


def _audience_limits(audience: Audience | None) -> list[str]:
    if audience is None or len(audience) == 0:
        return ["No customer may be emailed now: the share behind a privacy proxy and in cold start is unknown."]
    features = audience.features
    hidden = float(features.engagement["opens_hidden"].mean())
    scalars = features.matrix.scalars
    no_history = np.nan_to_num(scalars[:, SCALAR_FEATURES.index("n_emails")]) + np.nan_to_num(
        scalars[:, SCALAR_FEATURES.index("n_sessions")]
    )
    cold = ~features.profiled | (no_history == 0)
    return [
        f"Privacy proxies: {percent(hidden)} of the {len(audience):,} recipients read their email behind a privacy "
        "proxy (such as Apple Mail Privacy Protection): their opens cannot be seen, so their open propensity rests "
        "on their clicks, visits, purchases and attributes, and their measured open rates are not theirs.",
        f"Cold start: {percent(float(cold.mean()))} of the recipients have no history of their own (no profiling "
        f"consent: {percent(float((~features.profiled).mean()))}; no email or visit yet: the rest); they get their "
        "time zone's daily rhythm and the population's patterns.",
    ]


def card(inputs: ReportInputs, found: Champion) -> Card:
    run = found.run
    params = run.data.params if run is not None else {}
    metrics = run.data.metrics if run is not None else {}
    tags = run.data.tags if run is not None else {}

    def stamp(key: str) -> str:
        value = params.get(key)
        return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M UTC") if value else "not recorded"

    rows = "emails sent" if found.name != "next_best_offer" else "offers shown"
    window = [
        ("first example", stamp("data_start")),
        ("trained on examples before", stamp("train_end")),
        ("held out from", stamp("valid_start")),
        ("last example", stamp("data_end")),
        ("how the held-out part was chosen", params.get("split", "not recorded")),
    ]
    sizes = [
        (f"{rows}, earlier part", f"{_number(metrics, 'train_rows'):,.0f}"),
        (f"{rows}, held-out part", f"{_number(metrics, 'valid_rows'):,.0f}"),
        ("observed rate in the held-out part", percent(_number(metrics, "valid_positive_rate"))),
    ]
    facts = [
        ("registered model", f"{found.name} v{found.version}"),
        ("registered", found.registered_at.strftime("%Y-%m-%d %H:%M UTC") if found.registered_at else "unknown"),
        ("feature service", tags.get("feature_service", params.get("feature_service", "not recorded"))),
        ("code version", tags.get("code_version", "unknown")),
        ("tuned with Optuna", tags.get("tuned", "unknown")),
        ("boosting rounds", f"{_number(metrics, 'best_iteration'):,.0f} (early-stopped on the held-out part)"),
    ]
    limits: list[str] = []
    if found.name in ("open_propensity", "send_time"):
        limits.extend(_audience_limits(inputs.audience))
        limits.extend(_exploration(inputs))
        limits.append(
            "Opens count within the label window after each send; sends of proxied recipients are left out of "
            "training, since their opens are the proxy's."
        )
    else:
        limits.extend(_audience_limits(inputs.audience)[1:])
        limits.append(
            f"Conversions count within each offer's window ({inputs.settings.conversion_window_days} days unless "
            "the offer sets its own): exposures whose window had not closed when the data ended are not learned "
            "from."
        )
    limits.append(
        "The model knows only what the data shows: a new offer, a new kind of campaign or a change in how people "
        "read email is learned after it appears in the data and the pipeline runs again."
    )
    promotion = tags.get(f"promotion.{found.name}")
    return Card(found, window, sizes, metric_rows(inputs, found), promotion, facts, limits)


def model_cards_section(inputs: ReportInputs) -> Section | None:
    if not inputs.champions:
        return None
    cards = []
    for found in inputs.champions.values():
        inputs.status(f"writing the {found.name} model card")
        cards.append(card(inputs, found))
    summary = []
    for made in cards:
        auc = made.metrics[0]
        others = ", ".join(f"{name} {value:.3f}" for name, value in auc.baselines[1:]) or "no other baseline recorded"
        summary.append(
            f"{made.champion.title} v{made.champion.version}: held-out AUC {auc.value:.3f} (a random order 0.5; "
            f"{others})."
        )
    return Section(
        slug="models",
        title="Model cards",
        summary=summary,
        template="models.html.j2",
        context={"cards": cards},
    )
