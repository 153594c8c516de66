"""SHAP values in plain words: which features drive one prediction, as sentences a marketer reads.

Serving explains single predictions with it (`/v1/explain`); training's reports (`training.explain`) name
features the same way.
"""

from __future__ import annotations

from typing import TypedDict

import lightgbm as lgb
import numpy as np
import pandas as pd
import shap

READABLE = {
    "local_weekday": "the local weekday of the send",
    "is_weekend": "a weekend send",
    "utc_offset": "the customer's time zone",
    "rhythm_at_hour": "how active the customer usually is at this hour (site visits and opens)",
    "rhythm_vs_peak": "how close this hour is to the customer's most active hour",
    "open_same_day_type_total": "recent opens on this kind of day (weekday or weekend)",
    "click_same_day_type_total": "recent clicks on this kind of day (weekday or weekend)",
    "session_same_day_type_total": "recent site visits on this kind of day (weekday or weekend)",
    "signup_at_days": "days since the customer joined the list",
    "open_rate": "the customer's past open rate",
    "click_rate": "the customer's past click rate",
    "sends_7d": "emails sent to the customer in the last 7 days",
    "n_emails": "emails the customer has received",
    "n_human_opens": "emails the customer has opened",
    "n_sessions": "site visits",
    "n_purchases": "purchases",
    "purchase_value": "money spent",
    "days_since_human_open": "days since the customer last opened an email",
    "days_since_session": "days since the customer last visited the site",
    "days_since_email": "days since the last email",
    "opens_observable": "whether the customer's own opens can be seen (not behind a privacy proxy)",
    "topic_affinity": "the customer's interest in the campaign's topic",
    "topic_interest": "the topic being one of the customer's stated interests",
    "campaign_kind": "the kind of campaign",
    "category_affinity": "the customer's interest in the offer's category",
    "category_interest": "the offer's category being one of the customer's stated interests",
    "discount_pct": "the size of the discount",
    "margin": "the offer's margin",
    "offer_kind": "the kind of offer",
    "offer_category": "the offer's category",
    "offer_id": "the offer itself",
}


def readable(feature: str) -> str:
    if feature.startswith("attr_"):
        return f"the customer attribute {feature[5:].replace('_', ' ')}"
    return READABLE.get(feature, feature.replace("_", " "))


def _format(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "unknown" if np.isnan(value) else f"{value:.3g}"
    return str(value)


def sentence(feature: str, value: object, contribution: float) -> str:
    direction = "raises" if contribution > 0 else "lowers"
    return f"{readable(feature)} ({_format(value)}) {direction} the prediction ({contribution:+.2f} log-odds)"


def shap_values(booster: lgb.Booster, design: pd.DataFrame) -> tuple[np.ndarray, float]:
    """SHAP values in log-odds and the base value, with SHAP's exact tree explainer."""
    explainer = shap.TreeExplainer(booster)
    values = explainer.shap_values(design)
    if isinstance(values, list):
        values = values[-1]
    base = explainer.expected_value
    base = float(np.ravel(base)[-1])
    return np.asarray(values), base


class DriverFacts(TypedDict):
    """One driver of a prediction: the feature, its value, its SHAP value (log-odds) and the sentence."""

    feature: str
    value: float | str | None
    shap_value: float
    sentence: str


def explain_rows(booster: lgb.Booster, design: pd.DataFrame, top: int = 5) -> tuple[float, list[list[DriverFacts]]]:
    """Each row's strongest drivers, strongest first, and the base value (log-odds)."""
    values, base = shap_values(booster, design)
    out = []
    for r in range(len(design)):
        order = np.argsort(-np.abs(values[r]))[:top]
        drivers: list[DriverFacts] = []
        for j in order:
            feature = design.columns[j]
            value = design.iloc[r, j]
            plain = (
                None if pd.isna(value) else (float(value) if isinstance(value, int | float | np.number) else str(value))
            )
            drivers.append(
                {
                    "feature": str(feature),
                    "value": plain,
                    "shap_value": float(values[r, j]),
                    "sentence": sentence(feature, value, float(values[r, j])),
                }
            )
        out.append(drivers)
    return base, out
