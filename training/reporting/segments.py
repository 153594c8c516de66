"""The segments section: how likely each group of customers is to open, and what drives it in that group.

Customers are grouped by time zone, country and every `attr_*` column of the customers table (a number in
two or three ranges). A group of fewer than `MIN_SEGMENT` customers is never shown on its own: the small ones
are told together as "other", which is itself left out when it is still too small (the page says how many
customers that leaves out). Each segment's figure is the open-propensity champion's mean predicted probability
at the hour sendwise would pick, over the customers sendwise could email now; its drivers are what sets it
apart: the features whose mean SHAP value over the segment's customers differs most from the mean over all
of them, said as raising or lowering its opens against everyone's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sendwise.explain import readable, shap_values
from training.explain import MIN_GROUP, Group, feature_groups
from training.reporting.audience import Audience
from training.reporting.inputs import NO_AUDIENCE, Champion, ReportInputs
from training.reporting.plots import probability_bars
from training.reporting.site import PLOTS, Section, percent

MIN_SEGMENT = MIN_GROUP
MAX_SEGMENTS = 12
TOP_DRIVERS = 3
SHAP_ROWS = 3000
"""Customers whose predictions are explained at most (a seeded sample beyond): a segment's drivers are read
from its customers among them."""
GROUPINGS = {"timezone": "time zone", "country": "country"}


@dataclass(frozen=True)
class SegmentDriver:
    name: str
    lifts: bool
    """The feature raises the segment's predictions above everyone's (else it lowers them)."""


@dataclass(frozen=True)
class Segment:
    label: str
    customers: int
    mean_probability: float
    drivers: list[SegmentDriver]


@dataclass(frozen=True)
class Grouping:
    """One way of grouping customers (a column), its segments, and how many customers none of them shows."""

    column: str
    name: str
    segments: list[Segment]
    left_out: int
    chart: str


def grouping_name(column: str) -> str:
    return GROUPINGS.get(column, readable(column).removeprefix("the customer attribute "))


def explained_rows(rows: int, seed: int) -> np.ndarray:
    """The customers whose predictions SHAP explains: all of them, or a seeded `SHAP_ROWS` (exact tree SHAP
    costs about a millisecond a customer for the open model)."""
    if rows <= SHAP_ROWS:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, size=SHAP_ROWS, replace=False))


def _segment_drivers(shap: np.ndarray, columns: list[str], members: np.ndarray) -> list[SegmentDriver]:
    """The features that set the segment's predictions apart from everyone's most: the largest differences of
    mean SHAP value (log-odds add up, so these differences add up to the segment's gap in mean log-odds)."""
    explained = ~np.isnan(shap[:, 0])
    own = shap[members & explained]
    if len(own) == 0:
        return []
    gap = own.mean(axis=0) - shap[explained].mean(axis=0)
    top = np.argsort(-np.abs(gap), kind="stable")[:TOP_DRIVERS]
    return [SegmentDriver(readable(columns[j]), bool(gap[j] > 0)) for j in top]


def segments_of(
    column: str, values: pd.Series, probability: np.ndarray, shap: np.ndarray, columns: list[str]
) -> tuple[list[Segment], int]:
    """The segments of one column (each of at least `MIN_SEGMENT` customers) and how many customers they leave
    out."""
    groups: list[Group] = feature_groups(column, values, probability, MIN_SEGMENT, max_categories=MAX_SEGMENTS)
    shown = [g.label for g in groups if g.categories is not None]
    found = []
    covered = 0
    for group in groups:
        members = group.members(values, shown)
        covered += int(members.sum())
        found.append(Segment(group.label, group.rows, group.mean_probability, _segment_drivers(shap, columns, members)))
    found.sort(key=lambda s: (s.label in ("other", "unknown"), -s.customers))
    return found, len(values) - covered


def segments_section(inputs: ReportInputs) -> Section | None:
    """Segments by time zone, country and attribute, from the open-propensity champion (else send time's)."""
    found: Champion | None = inputs.champions.get("open_propensity") or inputs.champions.get("send_time")
    if found is None:
        return None
    audience: Audience | None = inputs.audience
    if audience is None or len(audience) == 0:
        return Section.unavailable("segments", "Segments", NO_AUDIENCE)
    inputs.status("explaining the segments")
    columns = found.booster.feature_name()
    design = audience.open_design(columns)
    probability = np.asarray(found.booster.predict(design), dtype=np.float64)
    explained = explained_rows(len(design), inputs.settings.seed)
    shap = np.full((len(design), len(columns)), np.nan)
    shap[explained], _ = shap_values(found.booster, design.iloc[explained])
    frame = audience.segments
    groupings: list[Grouping] = []
    for column in frame.columns:
        segments, left_out = segments_of(column, frame[column], probability, shap, columns)
        if not segments:
            continue
        chart = probability_bars(
            inputs.plots_dir / f"segments-{len(groupings)}.png",
            [s.label for s in segments],
            [s.mean_probability for s in segments],
            "predicted open probability at sendwise's hour (%)",
            reference=float(probability.mean()),
        )
        groupings.append(Grouping(column, grouping_name(column), segments, left_out, f"{PLOTS}/{chart.name}"))
    summary = [
        f"{len(audience):,} customers sendwise could email now: {percent(float(probability.mean()))} would open "
        "at sendwise's hour on average."
    ]
    for grouping in groupings[:2]:
        top = max(grouping.segments, key=lambda s: s.mean_probability)
        low = min(grouping.segments, key=lambda s: s.mean_probability)
        if top is not low:
            summary.append(
                f"By {grouping.name}: {top.label} opens most ({percent(top.mean_probability)}), "
                f"{low.label} least ({percent(low.mean_probability)})."
            )
    return Section(
        slug="segments",
        title="Segments",
        summary=summary,
        template="segments.html.j2",
        context={
            "groupings": groupings,
            "overall": float(probability.mean()),
            "recipients": len(audience),
            "model": found,
            "min_segment": MIN_SEGMENT,
        },
        images=[g.chart for g in groupings],
    )
