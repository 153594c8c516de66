"""The report's realized lift: what sendwise's decisions earned, measured from the decision log and the events
that came back (`training.lift`, the same figures as `sendwise lift`).

Per campaign, a table of every comparison (figure under sendwise, its baseline, the lift with its 95% interval
and the decisions it rests on, or "not measurable" and why) and a chart of the measurable lifts with their
intervals, so that a reader sees at once which ones exclude zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sendwise.asof import text as time_text
from training.lift import ALL_CAMPAIGNS, HOLDOUT, SEND_TIME, Comparison, LiftReport, measure_lift
from training.reporting.inputs import ReportInputs
from training.reporting.plots import BLUE, GREY, draw, short
from training.reporting.site import PLOTS, Section, number

if TYPE_CHECKING:
    from matplotlib.axes import Axes

SLUG = "lift"
TITLE = "Realized lift"
MONEY = {"revenue"}
"""Metrics that are amounts per decision, not rates."""


def _per_decision(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    if metric in MONEY:
        return f"{value:,.2f}"
    return f"{100 * value:.2f}%" if value < 1 else f"{value:.3f}"


def _lift(found: Comparison) -> str:
    if found.lift is None or found.low is None or found.high is None:
        return "–"
    return f"{found.lift:+.1%} ({found.low:+.1%} to {found.high:+.1%})"


def _row(found: Comparison) -> list[str]:
    if not found.measurable:
        return [found.comparison, found.metric, "–", "–", f"not measurable: {found.why}", number(found.decisions)]
    return [
        found.comparison,
        found.metric,
        _per_decision(found.metric, found.treated),
        _per_decision(found.metric, found.baseline),
        _lift(found),
        f"{found.decisions:,} ({found.baseline_decisions:,} in the baseline)",
    ]


def _verdict(found: Comparison) -> str:
    """One sentence a marketer reads: what the figure says, in words."""
    arm = "sendwise's own send hours" if found.comparison == SEND_TIME else "the customers who were emailed"
    base = "a random hour" if found.comparison == SEND_TIME else "the held-out customers"
    if found.lift is None:
        return ""
    if found.excludes_zero():
        way = "more" if found.lift > 0 else "fewer"
        return (
            f"{found.campaign_id}: {arm} earned {abs(found.lift):.0%} {way} {found.metric} per decision than "
            f"{base} (95% interval {found.low:+.0%} to {found.high:+.0%}, {found.decisions:,} decisions)."
        )
    return (
        f"{found.campaign_id}: {found.metric} under {arm} and under {base} cannot be told apart yet "
        f"(lift {found.lift:+.0%}, 95% interval {found.low:+.0%} to {found.high:+.0%}, {found.decisions:,} decisions)."
    )


def _chart(report: LiftReport, inputs: ReportInputs) -> str | None:
    """A forest plot of the measurable lifts of every campaign (or of all campaigns together where there are
    several): the point and its interval, on a percentage axis with zero marked."""
    shown = [c for c in report.comparisons if c.measurable and c.lift is not None]
    several = any(c.campaign_id == ALL_CAMPAIGNS for c in shown)
    if several:
        shown = [c for c in shown if c.campaign_id == ALL_CAMPAIGNS]
    if not shown:
        return None
    name = f"{PLOTS}/lift.png"

    def paint(axis: Axes) -> None:
        y = np.arange(len(shown))[::-1]
        lifts = np.array([c.lift for c in shown], dtype=float) * 100
        low = np.array([c.low for c in shown], dtype=float) * 100
        high = np.array([c.high for c in shown], dtype=float) * 100
        colours = [BLUE if c.excludes_zero() else GREY for c in shown]
        axis.hlines(y, low, high, colors=colours, linewidth=2)
        axis.scatter(lifts, y, color=colours, zorder=3)
        axis.axvline(0, color="#4a5568", linewidth=1)
        labels = [short(f"{'send time' if c.comparison == SEND_TIME else HOLDOUT}: {c.metric}") for c in shown]
        axis.set_yticks(y, labels)
        axis.set_xlabel("lift per decision, % (dot: estimate; line: 95% interval)")
        axis.set_title("all campaigns together" if several else shown[0].campaign_id)

    draw(inputs.site_dir / name, 7.5, 0.45 * len(shown) + 1.4, paint)
    return name


def lift_section(inputs: ReportInputs) -> Section | None:
    """The realized-lift page: every campaign's comparisons from the decision log, or why there are none."""
    inputs.status("realized lift: reading the decision log")
    report = measure_lift(inputs.settings)
    if not report.comparisons:
        why = " ".join(report.notes) or "no decisions in the log yet"
        said = (
            f"Realized lift is not measurable yet: {why}. It is measured once the sending system has sent "
            "sendwise's decisions and their events (opens, clicks, sessions, purchases) were ingested."
        )
        # not a missing part of the report (no note): a home whose decisions were not sent yet is a normal state
        return Section(slug=SLUG, title=TITLE, summary=[said], context={"paragraphs": [said]})
    measurable = [c for c in report.comparisons if c.measurable]
    summary = [_verdict(c) for c in measurable if c.campaign_id in (ALL_CAMPAIGNS, report.campaigns()[0])][:3]
    if not summary:
        summary = ["No lift is measurable yet: the page says why for each figure."]
    window = (
        f"{report.decisions:,} decisions from {time_text(report.first)} to {time_text(report.last)}"
        if report.first is not None and report.last is not None
        else f"{report.decisions:,} decisions"
    )
    paragraphs = [
        f"Measured on {window}, with the events that came back until {time_text(report.as_of)}"
        if report.as_of is not None
        else f"Measured on {window}.",
        "Send time compares sendwise's own hours with a random allowed hour, using the sends that went out at an "
        "exploration hour (each weighted by how likely its hour was). Sent vs holdout compares every customer "
        "sendwise could email with the customers held out of email, over the conversion window after each "
        "decision. Intervals are 95%; a lift whose interval contains 0 is not yet told apart from no effect.",
        *report.notes,
    ]
    tables = [
        {
            "caption": campaign,
            "header": ["comparison", "metric", "sendwise", "baseline", "lift (95% interval)", "decisions"],
            "rows": [_row(c) for c in report.comparisons if c.campaign_id == campaign],
        }
        for campaign in report.campaigns()
    ]
    chart = _chart(report, inputs)
    figures = (
        [{"src": chart, "alt": "realized lifts with their 95% intervals", "caption": "Measurable lifts."}]
        if chart
        else []
    )
    return Section(
        slug=SLUG,
        title=TITLE,
        summary=summary,
        context={"paragraphs": paragraphs, "tables": tables, "figures": figures},
        images=[chart] if chart else [],
    )
