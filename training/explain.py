"""What drives a model, for marketers: its strongest features, told on the probability scale.

SHAP (`sendwise.explain`, which also names the features in a user's words) ranks the features by how much they
move the model's predictions on the rows given (mean |SHAP value|). Each top driver is then told from the
model's own predictions, never by turning SHAP values into probabilities: the rows are split by the feature's
value (its categories; "none" against "some" where many rows have none; else two or three ranges with round
bounds) and each group's mean predicted probability is reported: "emails to customers whose past open rate is
35% or more: 31% opened; under 12%: 9%". Groups of fewer than `MIN_GROUP` rows are merged or left out: a
mean over a handful of rows says little and could describe a person.

Single predictions are explained by `sendwise.explain`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from sendwise.explain import readable, shap_values

MIN_GROUP = 50
"""The fewest rows a group (or a segment) needs to be shown on its own."""
MAX_CATEGORIES = 8
"""Categories shown apart at most; the smaller ones are told together as "other"."""
SOME_SHARE = (0.2, 0.8)
"""A number that is 0 in this share of rows is split as "none" against "some"."""


@dataclass(frozen=True)
class Group:
    """Rows that share a range (`low` <= value < `high`, either bound open where None), a set of categories,
    or a missing value; and the model's mean prediction over them."""

    label: str
    rows: int
    mean_probability: float
    low: float | None = None
    high: float | None = None
    categories: tuple[str, ...] | None = None
    other: bool = False
    """The categories not shown apart (all but `categories` of the groups beside it)."""
    missing: bool = False

    def members(self, values: pd.Series, shown: Sequence[str] = ()) -> np.ndarray:
        """Which of `values` fall in the group (`shown`: the categories shown apart, for "other")."""
        if self.missing:
            return np.asarray(values.isna())
        if self.categories is not None:
            return np.asarray(values.astype(object).isin(self.categories) & values.notna())
        if self.other:
            return np.asarray(values.notna() & ~values.astype(object).isin(list(shown)))
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        inside = ~np.isnan(numbers)
        if self.low is not None:
            inside &= numbers >= self.low
        if self.high is not None:
            inside &= numbers < self.high
        return inside


@dataclass(frozen=True)
class Driver:
    """One of a model's strongest features: its name in plain words, its SHAP weight, and its groups."""

    feature: str
    name: str
    importance: float
    """Mean |SHAP value| over the rows (log-odds): what ranks the drivers, never shown as a number."""
    groups: tuple[Group, ...]

    @property
    def spread(self) -> float:
        """Highest group's mean prediction less the lowest's."""
        rates = [g.mean_probability for g in self.groups]
        return max(rates) - min(rates) if rates else 0.0

    def highest(self) -> Group:
        return max(self.groups, key=lambda g: g.mean_probability)

    def lowest(self) -> Group:
        return min(self.groups, key=lambda g: g.mean_probability)

    def comparison(self, outcome: str) -> str:
        """`31% of emails opened when 35% or more, 9% when under 12%`."""
        high, low = self.highest(), self.lowest()
        return (
            f"{_percent(high.mean_probability)} {outcome} when {high.label}, "
            f"{_percent(low.mean_probability)} when {low.label}"
        )

    def sentence(self, outcome: str) -> str:
        """`the customer's past open rate: 31% of emails opened when 35% or more, 9% when under 12%.`"""
        if len(self.groups) < 2:
            return f"{self.name[0].upper()}{self.name[1:]}: too few rows differ in it to compare groups."
        return f"{self.name[0].upper()}{self.name[1:]}: {self.comparison(outcome)}."


@dataclass
class Explained:
    """A model's SHAP values and predictions over some rows."""

    design: pd.DataFrame
    shap: np.ndarray
    prediction: np.ndarray

    @property
    def mean_probability(self) -> float:
        return float(self.prediction.mean())

    def only(self, features: Sequence[str]) -> Explained:
        """The same rows with only these features (for plots of part of a model)."""
        keep = [k for k, c in enumerate(self.design.columns) if c in set(features)]
        return Explained(self.design.iloc[:, keep], self.shap[:, keep], self.prediction)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%" if value < 0.1 else f"{100 * value:.0f}%"


def _round(value: float) -> float:
    """Two significant figures: a bound a person reads."""
    if value == 0 or not math.isfinite(value):
        return value
    digits = 1 - math.floor(math.log10(abs(value)))
    return round(value, digits)


def is_share(feature: str) -> bool:
    """A feature that is a rate between 0 and 1, shown as a percentage."""
    return feature.endswith("_rate") or feature.endswith("_affinity")


def value_text(feature: str, value: float) -> str:
    """A bound as a person reads it: a rate as a percentage, days with their unit, else two figures."""
    if is_share(feature):
        return f"{100 * value:.0f}%"
    text = f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.2g}"
    return f"{text} days" if feature.startswith("days_since") or feature.endswith("_days") else text


def _numeric_groups(feature: str, values: np.ndarray, prediction: np.ndarray, min_rows: int) -> list[Group]:
    def group(label: str, mask: np.ndarray, low: float | None, high: float | None) -> Group:
        return Group(label, int(mask.sum()), float(prediction[mask].mean()), low=low, high=high)

    known = ~np.isnan(values)
    x = np.where(known, values, np.nan)
    found: list[Group] = []
    distinct = np.unique(x[known])
    if len(distinct) < 2:
        return found
    if set(distinct.tolist()) <= {0.0, 1.0}:
        found = [group("yes", x == 1, 1.0, None), group("no", x == 0, None, 1.0)]
    elif distinct.min() >= 0 and SOME_SHARE[0] <= np.mean(x[known] == 0) <= SOME_SHARE[1]:
        positive = float(distinct[distinct > 0].min())  # nothing lies between 0 and it: the bound of "above 0"
        found = [group("above 0", x > 0, positive, None), group("at 0", x == 0, None, positive)]
    else:
        edges = sorted({_round(float(q)) for q in np.nanquantile(x, [1 / 3, 2 / 3])})
        edges = [e for e in edges if distinct.min() < e <= distinct.max()]
        bounds = [None, *edges, None]
        for low, high in itertools.pairwise(bounds):
            mask = known.copy()
            if low is not None:
                mask &= x >= low
            if high is not None:
                mask &= x < high
            if low is None and high is not None:
                label = f"under {value_text(feature, high)}"
            elif high is None and low is not None:
                label = f"{value_text(feature, low)} or more"
            elif low is not None and high is not None:
                label = f"{value_text(feature, low)} to under {value_text(feature, high)}"
            else:
                continue
            if mask.any():
                found.append(group(label, mask, low, high))
    return [g for g in found if g.rows >= min_rows]


def _category_groups(values: pd.Series, prediction: np.ndarray, min_rows: int, most: int) -> list[Group]:
    labels = values.astype(object)
    counts = labels[labels.notna()].value_counts()
    shown = [str(c) for c, n in counts.items() if n >= min_rows][:most]
    found = []
    for category in shown:
        mask = np.asarray(labels.isin([category]) & labels.notna())
        found.append(Group(category, int(mask.sum()), float(prediction[mask].mean()), categories=(category,)))
    rest = np.asarray(labels.notna() & ~labels.isin(shown))
    if rest.sum() >= min_rows:
        found.append(Group("other", int(rest.sum()), float(prediction[rest].mean()), other=True))
    return found


def feature_groups(
    feature: str,
    values: pd.Series,
    prediction: np.ndarray,
    min_rows: int = MIN_GROUP,
    max_categories: int = MAX_CATEGORIES,
) -> list[Group]:
    """The rows split by one feature, each group with the mean of `prediction` over it: groups of fewer than
    `min_rows` rows are left out; categories beyond the `max_categories` largest, or of fewer rows, are told
    together as "other" (itself left out when it has fewer than `min_rows`)."""
    prediction = np.asarray(prediction, dtype=np.float64)
    missing = np.asarray(values.isna())
    if isinstance(values.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(values):
        found = _category_groups(values, prediction, min_rows, max_categories)
    else:
        found = _numeric_groups(feature, values.to_numpy(dtype=np.float64, na_value=np.nan), prediction, min_rows)
    if missing.sum() >= min_rows and found:
        found.append(Group("unknown", int(missing.sum()), float(prediction[missing].mean()), missing=True))
    return found


def shap_explain(booster: lgb.Booster, design: pd.DataFrame) -> Explained:
    """SHAP values and predicted probabilities of `booster` on the rows of `design`."""
    design = design[booster.feature_name()].reset_index(drop=True)
    values, _ = shap_values(booster, design)
    return Explained(design, values, np.asarray(booster.predict(design), dtype=np.float64))


def top_drivers(
    explained: Explained,
    top: int = 8,
    features: Sequence[str] | None = None,
    min_rows: int = MIN_GROUP,
    category_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> list[Driver]:
    """The `top` features (among `features` where given) by mean |SHAP value|, strongest first, each with its
    groups' mean predicted probabilities; features that split no group of `min_rows` rows from another are
    passed over. `category_labels` names a categorical feature's values (an offer id by its title)."""
    design = explained.design
    weight = pd.Series(np.abs(explained.shap).mean(axis=0), index=design.columns)
    if features is not None:
        weight = weight[[f for f in design.columns if f in set(features)]]
    drivers: list[Driver] = []
    for feature, importance in weight.sort_values(ascending=False).items():
        if len(drivers) == top:
            break
        groups = feature_groups(str(feature), design[feature], explained.prediction, min_rows)
        names = (category_labels or {}).get(str(feature), {})
        groups = [replace(g, label=names.get(g.label, g.label)) if g.categories else g for g in groups]
        if len(groups) >= 2:
            drivers.append(Driver(str(feature), readable(str(feature)), float(importance), tuple(groups)))
    return drivers


def _plot_frame(design: pd.DataFrame) -> pd.DataFrame:
    """The design as numbers for SHAP's colouring: categories by their code, missing values NaN."""
    frame = pd.DataFrame(index=design.index)
    for column in design.columns:
        values = design[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            codes = values.cat.codes.astype(np.float64)
            frame[column] = codes.where(codes >= 0)
        elif pd.api.types.is_numeric_dtype(values):
            frame[column] = values.astype(np.float64)
        else:
            frame[column] = np.nan
    return frame


def shap_plots(explained: Explained, out_dir: Path, stem: str, top: int = 10) -> tuple[Path, Path]:
    """SHAP's own summary plots of the drivers: the beeswarm (each dot a row) and the bar chart of mean |SHAP|,
    as `<stem>-beeswarm.png` and `<stem>-bar.png` in `out_dir`."""
    import shap

    from training.reporting.plots import plotting, save, short

    names = [short(readable(c), 56) for c in explained.design.columns]
    explanation = shap.Explanation(
        values=explained.shap, data=_plot_frame(explained.design).to_numpy(), feature_names=names
    )
    paths = (out_dir / f"{stem}-beeswarm.png", out_dir / f"{stem}-bar.png")
    with plotting():
        import matplotlib.pyplot as plt

        for path, plot in zip(paths, (shap.plots.beeswarm, shap.plots.bar), strict=True):
            plt.figure(figsize=(9, 0.45 * top + 1.5))
            plot(explanation, max_display=top, show=False)
            save(plt.gcf(), path)
    return paths
