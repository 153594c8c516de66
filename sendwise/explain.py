"""SHAP values in plain words: which features drive one prediction, as sentences a marketer reads.

A prediction's log-odds are the model's base value plus one SHAP value per feature. A sentence turns one of
them into probabilities: the prediction as it is and as it would be without that feature's part, and how many
times as likely the one is as the other ("the customer's past open rate (42%) makes an open about twice as
likely: 31% instead of 15%"). The SHAP values themselves stay in log-odds, where they add up.

Serving explains single predictions with `explain_rows` (`/v1/explain`, and `/v1/decide` with `explain`);
training's reports (`training.explain`) name features the same way (`readable`) and compute SHAP values over
a whole design with SHAP's own explainer (`shap_values`).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypedDict

import lightgbm as lgb
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

READABLE = {
    "local_weekday": "the local weekday of the send",
    "is_weekend": "a weekend send",
    "utc_offset": "the customer's time zone",
    "rhythm_at_hour": "the customer's usual site visits and opens at this hour",
    "rhythm_vs_peak": "how close this hour is to the customer's most active hour",
    "open_same_day_type_total": "recent opens on this kind of day (weekday or weekend)",
    "click_same_day_type_total": "recent clicks on this kind of day (weekday or weekend)",
    "session_same_day_type_total": "recent site visits on this kind of day (weekday or weekend)",
    "signup_at_days": "the time since the customer joined the list",
    "open_rate": "the customer's past open rate",
    "click_rate": "the customer's past click rate",
    "sends_7d": "emails sent to the customer in the last 7 days",
    "n_emails": "emails the customer has received",
    "n_human_opens": "emails the customer has opened",
    "n_clicks": "clicks in the customer's emails",
    "n_sessions": "site visits",
    "n_purchases": "purchases",
    "purchase_value": "money spent",
    "sessions_per_email": "site visits per email received",
    "purchases_per_email": "purchases per email received",
    "purchase_value_per_email": "money spent per email received",
    "days_since_human_open": "the time since the customer last opened an email",
    "days_since_session": "the time since the customer last visited the site",
    "days_since_email": "the time since the last email",
    "opens_observable": "whether the customer's own opens can be seen (not behind a privacy proxy)",
    "topic_affinity": "the customer's interest in the campaign's topic",
    "topic_interest": "the topic being one of the customer's stated interests",
    "campaign_kind": "the kind of campaign",
    "category_affinity": "the customer's interest in the offer's category",
    "category_interest": "the offer's category being one of the customer's stated interests",
    "discount_pct": "the size of the discount",
    "price": "the offer's price",
    "margin": "the offer's margin",
    "offer_kind": "the kind of offer",
    "offer_category": "the offer's category",
    "offer_id": "the offer itself",
}

YES_NO = {
    "is_weekend": ("a weekend send", "a weekday send"),
    "opens_observable": ("the customer's opens being visible", "the customer's opens being hidden by a privacy proxy"),
    "topic_interest": (
        "the campaign's topic being one of the customer's stated interests",
        "the campaign's topic not being among the customer's stated interests",
    ),
    "category_interest": (
        "the offer's category being one of the customer's stated interests",
        "the offer's category not being among the customer's stated interests",
    ),
}
"""Features that are yes or no: the sentence names the case instead of a value."""

OPEN = "an open"
CONVERSION = "a conversion"
"""What the open models and the offer model predict, as a sentence names it."""


def readable(feature: str) -> str:
    if feature.startswith("attr_"):
        return f"the customer attribute {feature[5:].replace('_', ' ')}"
    return READABLE.get(feature, feature.replace("_", " "))


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _number(value: float) -> str:
    """At most three significant figures, without trailing zeros: 3, 3.4, 0.125, 1250."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return np.format_float_positional(value, precision=3, unique=True, fractional=False, trim="-")


def _share(value: float) -> str:
    return percent(value) if value > 0 else "0%"


def _views(value: float) -> str:
    return f"{_share(value)} of their product views" if value > 0 else "none of their product views"


def _days(value: float) -> str:
    if value < 1:
        return "less than a day"
    return "1 day" if round(value) == 1 else f"{value:,.0f} days"


def _offset(value: float) -> str:
    return "UTC" if value == 0 else f"UTC{value:+g}"


_FORMATS = {
    "open_rate": _share,
    "click_rate": _share,
    "topic_affinity": _views,
    "category_affinity": _views,
    "rhythm_vs_peak": lambda v: f"{_share(v)} of their busiest hour",
    "rhythm_at_hour": lambda v: f"{_number(v)} times their average hour",
    "utc_offset": _offset,
    "discount_pct": lambda v: f"{_number(v)}%",
    "signup_at_days": _days,
    "days_since_human_open": _days,
    "days_since_session": _days,
    "days_since_email": _days,
}


def describe(feature: str, value: object) -> str:
    """The feature in plain words with its value: what a sentence is about."""
    if feature in YES_NO and not _missing(value):
        yes, no = YES_NO[feature]
        return yes if float(value) > 0 else no  # type: ignore[arg-type]
    if _missing(value):
        shown = "unknown"
    elif isinstance(value, int | float | np.number) and not isinstance(value, bool):
        number = float(value)
        shown = _FORMATS[feature](number) if feature in _FORMATS else _number(number)
    else:
        shown = str(value) or "none"
    return f"{readable(feature)} ({shown})"


def _decimals(probability: float) -> int:
    """Decimals that give a percentage two significant figures: 31%, 4.2%, 0.42%."""
    value = 100 * probability
    if value >= 10:
        return 0
    return max(1, 1 - math.floor(math.log10(value))) if value > 0 else 1


def percent(probability: float, decimals: int | None = None) -> str:
    """A probability as a percentage, to two significant figures unless `decimals` are given."""
    decimals = _decimals(probability) if decimals is None else decimals
    return f"{100 * probability:.{decimals}f}%"


_MULTIPLES = {
    1.5: "one and a half times",
    2.0: "twice",
    2.5: "two and a half times",
    3.0: "three times",
    3.5: "three and a half times",
    4.0: "four times",
    4.5: "four and a half times",
}
_FRACTIONS = {1.5: "two thirds", 2.0: "half", 3.0: "a third", 4.0: "a quarter"}


def _rounded_ratio(ratio: float) -> float:
    """To the nearest half below 5, the nearest whole number above."""
    return round(ratio * 2) / 2 if ratio < 4.75 else float(round(ratio))


def _times(ratio: float) -> str:
    rounded = _rounded_ratio(ratio)
    return _MULTIPLES.get(rounded, f"{rounded:g} times")


def likelihood(prediction: float, without: float, outcome: str) -> str:
    """How `outcome` at `prediction` compares with `without`, in words: "makes an open about twice as likely"."""
    if prediction >= without:
        ratio = prediction / max(without, 1e-300)
        if ratio >= 1.5:
            return f"makes {outcome} about {_times(ratio)} as likely"
        return f"makes {outcome} {'more' if ratio >= 1.1 else 'slightly more'} likely"
    ratio = without / max(prediction, 1e-300)
    if ratio >= 1.5:
        rounded = _rounded_ratio(ratio)
        if rounded in _FRACTIONS:
            return f"makes {outcome} about {_FRACTIONS[rounded]} as likely"
        return f"makes {outcome} about {_times(ratio)} less likely"
    return f"makes {outcome} {'less' if ratio >= 1.1 else 'slightly less'} likely"


def sigmoid(log_odds: float) -> float:
    if log_odds >= 0:
        return 1.0 / (1.0 + math.exp(-log_odds))
    small = math.exp(log_odds)
    return small / (1.0 + small)


def sentence(feature: str, value: object, shap_value: float, log_odds: float, outcome: str = OPEN) -> str:
    """One driver in plain words, on the probability scale: the prediction (`log_odds`) beside what it would
    be without this feature's part (`log_odds - shap_value`), e.g. "the customer's past open rate (42%) makes
    an open about twice as likely: 31% instead of 15%"."""
    subject = describe(feature, value)
    prediction, without = sigmoid(log_odds), sigmoid(log_odds - shap_value)
    decimals = _decimals(min(prediction, without))  # both figures alike, as precise as the smaller needs
    for more in range(3):
        shown, shown_without = percent(prediction, decimals + more), percent(without, decimals + more)
        if shown != shown_without:
            return f"{subject} {likelihood(prediction, without, outcome)}: {shown} instead of {shown_without}"
    return f"{subject} hardly changes the chance of {outcome} ({percent(prediction)})"


class DriverFacts(TypedDict):
    """One driver of a prediction: the feature, its value, its SHAP value (log-odds) and the sentence."""

    feature: str
    value: float | str | None
    shap_value: float
    sentence: str


class Explanation(NamedTuple):
    """One prediction taken apart: `base_value` + every feature's SHAP value = `log_odds` (all in log-odds).
    `drivers` are the strongest of them, strongest first; `others` is the sum of the rest."""

    base_value: float
    log_odds: float
    drivers: list[DriverFacts]
    others: float

    @property
    def probability(self) -> float:
        return sigmoid(self.log_odds)


_scales: weakref.WeakKeyDictionary[lgb.Booster, float] = weakref.WeakKeyDictionary()


def log_odds_scale(booster: lgb.Booster) -> float:
    """What turns the booster's raw score into log-odds: the `sigmoid` parameter of a binary objective (1
    unless it was trained with another), read once per booster."""
    scale = _scales.get(booster)
    if scale is None:
        header = booster.model_to_string(num_iteration=1).partition("\nTree=")[0]
        objective = next((line for line in header.splitlines() if line.startswith("objective=")), "")
        given = [part.split(":", 1)[1] for part in objective.split()[1:] if part.startswith("sigmoid:")]
        scale = _scales[booster] = float(given[0]) if given else 1.0
    return scale


def contributions(
    booster: lgb.Booster, rows: np.ndarray | pd.DataFrame, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """([rows, features] SHAP values, [rows] base values), in log-odds: LightGBM's own exact TreeSHAP
    (`pred_contrib`), whose sum is the booster's raw score to rounding.

    Not SHAP's `TreeExplainer`: it reads the whole model again for every explainer made, and each call pays a
    fixed cost in Python before any tree is walked, which is most of a single row's time. LightGBM runs the same
    algorithm (path-dependent TreeSHAP, exact for trees) on the booster already loaded, in C++, so one row
    costs what walking its trees costs."""
    found = np.asarray(booster.predict(rows, pred_contrib=True, num_threads=threads), dtype=np.float64)
    scale = log_odds_scale(booster)
    return found[:, :-1] * scale, found[:, -1] * scale


def _plain(value: object) -> float | str | None:
    if _missing(value):
        return None
    if isinstance(value, int | float | np.number) and not isinstance(value, bool):
        return float(value)
    return str(value)


def explain_rows(
    booster: lgb.Booster,
    rows: np.ndarray | pd.DataFrame,
    names: Sequence[str],
    shown: Mapping[str, ArrayLike],
    outcome: str = OPEN,
    top: int = 5,
    threads: int = 1,
) -> list[Explanation]:
    """Each row's explanation with its `top` strongest drivers (features whose SHAP value is not zero).

    `rows` are what the booster predicts from (its columns `names`, categories as codes where a matrix);
    `shown` gives each feature's values per row as a person reads them (labels rather than codes)."""
    values, bases = contributions(booster, rows, threads)
    out = []
    columns = [np.asarray(shown[name], dtype=object) if name in shown else None for name in names]
    for r in range(len(values)):
        row = values[r]
        log_odds = float(bases[r] + row.sum())
        order = [j for j in np.argsort(-np.abs(row), kind="stable")[:top].tolist() if row[j] != 0.0]
        drivers: list[DriverFacts] = []
        for j in order:
            column = columns[j]
            value = column[r] if column is not None else None
            drivers.append(
                {
                    "feature": names[j],
                    "value": _plain(value),
                    "shap_value": float(row[j]),
                    "sentence": sentence(names[j], value, float(row[j]), log_odds, outcome),
                }
            )
        others = float(row.sum() - sum(d["shap_value"] for d in drivers))
        out.append(Explanation(float(bases[r]), log_odds, drivers, others))
    return out


def shap_values(booster: lgb.Booster, design: pd.DataFrame) -> tuple[np.ndarray, float]:
    """SHAP values in log-odds and the base value, with SHAP's exact tree explainer (for reports over a whole
    design; SHAP takes seconds to import, so only when asked)."""
    import shap

    explainer = shap.TreeExplainer(booster)
    values = explainer.shap_values(design)
    if isinstance(values, list):
        values = values[-1]
    base = explainer.expected_value
    base = float(np.ravel(base)[-1])
    return np.asarray(values), base
