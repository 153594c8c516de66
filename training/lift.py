"""Realized lift: the decision log joined with the events that came back, per campaign (`sendwise lift`).

Two comparisons, each a relative lift (treated / baseline − 1) with a 95% interval:

- **Send time: chosen hours vs exploration hours.** What sendwise's own hours earn against a uniformly random
  allowed hour, for human opens, clicks (within the label window of the send) and conversions (of the offers
  the email carried, within their conversion windows), estimated by inverse propensity from every send: a send
  whose hour was the policy's own counts for the chosen hours with weight 1/p, every send counts for the random
  hour with weight (1/A)/p, p being its logged propensity and A the number of hours it could have gone at. Both
  arms are self-normalised (each weighted mean divides by its weights' sum), which keeps them unbiased in large
  samples and steadier than plain IPS.
- **Sent vs holdout** (intention to treat): every decision of a kind that has a holdout (promotional,
  newsletter) and whose customer was not held out, whether it was sent or not, against the decisions of the
  held-out customers: site sessions, purchases and revenue per decision in the conversion window after the
  decision's window start.

Both lifts are ratios of weighted means; the interval is the delta method's on the log of the ratio, with
standard errors clustered by customer (one customer's decisions, and their overlapping windows, are not
independent), exponentiated back, so it is never below −100%.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from features.build import offer_windows
from features.labels import label_sends
from sendwise.asof import resolve_as_of, text
from sendwise.raw import load_table
from sendwise.settings import Settings
from serving.constraints import HELD_OUT_KINDS
from serving.decision_log import log_files, read_entries
from training.offpolicy import z_score

SEND_TIME = "send time: chosen hours vs exploration hours"
HOLDOUT = "sent vs holdout"
SEND_TIME_METRICS = ("opens", "clicks", "conversions")
HOLDOUT_METRICS = ("site sessions", "purchases", "revenue")
NO_CAMPAIGN = "(no campaign id)"
"""The campaign of decisions whose request named none."""
ALL_CAMPAIGNS = "(all campaigns)"
"""Every campaign's decisions together (shown where there is more than one campaign)."""
LEVEL = 0.95
MIN_EXPLORED = 30
"""Sends at an hour other than the policy's own that a send-time figure needs (they carry the baseline)."""
MIN_HOLDOUT = 30
"""Held-out decisions a holdout figure needs."""
EARLY_SEND = pd.Timedelta(minutes=5)
"""A send counts as sent in its decided hour from this long before the hour to its end (clocks differ a little)."""


@dataclass(frozen=True)
class Comparison:
    """One lift figure: a comparison of a campaign on one metric, per decision, with its 95% interval."""

    campaign_id: str
    comparison: str
    metric: str
    treated: float | None
    """Per decision, the treated arm: sendwise's own hours, or the decisions not held out."""
    baseline: float | None
    """Per decision, the baseline arm: a uniformly random allowed hour, or the holdout."""
    lift: float | None
    """treated / baseline − 1."""
    low: float | None
    high: float | None
    decisions: int
    """How many decisions the figure rests on (both arms)."""
    measurable: bool
    why: str
    """"" when measurable, else why not, in plain words."""
    baseline_decisions: int = 0
    """Of `decisions`, those of the baseline arm: sends at an exploration hour, or held-out decisions."""

    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and bool(self.low > 0 or self.high < 0)


@dataclass
class LiftReport:
    """Every comparison of every campaign, and what they were measured on."""

    comparisons: list[Comparison]
    since: pd.Timestamp | None = None
    as_of: pd.Timestamp | None = None
    """The data's end: a window counts once it closed by then."""
    decisions: int = 0
    """Decisions read from the log (from `since`)."""
    first: pd.Timestamp | None = None
    last: pd.Timestamp | None = None
    notes: list[str] = field(default_factory=list)

    def campaigns(self) -> list[str]:
        return list(dict.fromkeys(c.campaign_id for c in self.comparisons))

    def find(self, campaign_id: str, comparison: str, metric: str) -> Comparison:
        for found in self.comparisons:
            if (found.campaign_id, found.comparison, found.metric) == (campaign_id, comparison, metric):
                return found
        raise KeyError(f"no {comparison!r} on {metric!r} for campaign {campaign_id!r}")

    def as_dict(self) -> dict[str, object]:
        def stamp(value: pd.Timestamp | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "since": stamp(self.since),
            "as_of": stamp(self.as_of),
            "decisions": self.decisions,
            "first": stamp(self.first),
            "last": stamp(self.last),
            "notes": list(self.notes),
            "comparisons": [asdict(c) for c in self.comparisons],
        }


# --- the estimator ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RatioEstimate:
    """(Σa/Σb) / (Σc/Σd) − 1 with its interval: `treated` = Σa/Σb, `baseline` = Σc/Σd."""

    treated: float
    baseline: float
    lift: float
    low: float
    high: float
    std_error: float
    """Of the log of treated / baseline."""


def ratio_lift(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, clusters: np.ndarray, level: float = LEVEL
) -> RatioEstimate:
    """The lift of one weighted mean over another, both over the same units: treated = Σa/Σb, baseline = Σc/Σd.

    The interval is the delta method's on log(treated / baseline), whose influence per unit is
    a/ā − b/b̄ − c/c̄ + d/d̄, with the cluster-robust (CR1) standard error of its mean over `clusters`.
    Needs every sum positive and at least two clusters.
    """
    means = [float(np.mean(x)) for x in (a, b, c, d)]
    if min(means) <= 0:
        raise ValueError("every sum of a ratio lift must be positive")
    a_, b_, c_, d_ = means
    influence = a / a_ - b / b_ - c / c_ + d / d_
    codes = np.unique(clusters, return_inverse=True)[1].reshape(-1)
    sums = np.bincount(codes, weights=influence)
    groups = len(sums)
    if groups < 2:
        raise ValueError("a ratio lift's interval needs at least two clusters")
    std_error = float(np.sqrt(groups / (groups - 1) * np.sum(sums**2)) / len(influence))
    treated, baseline = a_ / b_, c_ / d_
    log_lift = np.log(treated) - np.log(baseline)
    z = z_score(level)
    return RatioEstimate(
        treated=treated,
        baseline=baseline,
        lift=float(np.expm1(log_lift)),
        low=float(np.expm1(log_lift - z * std_error)),
        high=float(np.expm1(log_lift + z * std_error)),
        std_error=std_error,
    )


def _figure(
    campaign: str,
    comparison: str,
    metric: str,
    arms: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    clusters: np.ndarray,
    decisions: int,
    baseline_decisions: int,
    baseline_name: str,
) -> Comparison:
    a, b, c, d = arms
    empty = Comparison(campaign, comparison, metric, None, None, None, None, None, decisions, False, "")
    empty = _with(empty, baseline_decisions=baseline_decisions)
    if c.sum() <= 0:
        return _with(empty, why=f"no {metric} came back from {baseline_name}: the baseline is 0")
    if a.sum() <= 0:
        baseline = float(c.sum() / d.sum())
        return _with(empty, baseline=baseline, why=f"no {metric} came back from the treated arm: its figure is 0")
    if len(np.unique(clusters)) < 2:
        return _with(empty, why="too few decisions: they are all one customer's")
    found = ratio_lift(a, b, c, d, clusters)
    return Comparison(
        campaign,
        comparison,
        metric,
        found.treated,
        found.baseline,
        found.lift,
        found.low,
        found.high,
        decisions,
        True,
        "",
        baseline_decisions,
    )


def _with(comparison: Comparison, **changes: object) -> Comparison:
    return Comparison(**{**asdict(comparison), **changes})


def _unmeasurable(
    campaign: str, comparison: str, metrics: Iterable[str], why: str, decisions: int = 0
) -> list[Comparison]:
    return [
        Comparison(campaign, comparison, metric, None, None, None, None, None, decisions, False, why)
        for metric in metrics
    ]


# --- reading the log and the events ----------------------------------------------------------------------------
LOG_FIELDS = (
    "decision_id",
    "customer_id",
    "campaign_id",
    "kind",
    "at",
    "send",
    "send_at",
    "propensity",
    "holdout",
    "policy_hour",
    "allowed_hours",
    "offer_ids",
)


def read_decisions(settings: Settings, progress: bool = False) -> pd.DataFrame:
    """Every logged decision with what lift needs (`LOG_FIELDS`). `at` is the decision's window start where the
    log has it (the campaign's time: a decision may be made ahead of it), else when it was decided."""
    files = log_files(settings.decisions_dir)
    total = sum(path.stat().st_size for path in files)
    rows: list[tuple[object, ...]] = []
    with tqdm(total=total, unit="B", unit_scale=True, desc="reading the decision log", disable=not progress) as bar:
        for path in files:
            for entry, size in read_entries(path):
                bar.update(size)
                campaign = entry.get("campaign")
                campaign = campaign if isinstance(campaign, dict) else {}
                shown = entry.get("exposed_offer_ids")
                rows.append(
                    (
                        entry.get("decision_id"),
                        entry.get("customer_id"),
                        campaign.get("campaign_id"),
                        campaign.get("kind") or "promotional",
                        entry.get("window_start") or entry.get("decided_at"),
                        bool(entry.get("send")),
                        entry.get("send_at"),
                        entry.get("propensity"),
                        bool(entry.get("holdout")),
                        entry.get("policy_hour"),
                        entry.get("allowed_hours"),
                        list(shown) if isinstance(shown, list) else [],
                    )
                )
    frame = pd.DataFrame(rows, columns=list(LOG_FIELDS))
    frame = frame.dropna(subset=["decision_id", "customer_id", "at"]).drop_duplicates("decision_id")
    frame["decision_id"] = frame["decision_id"].astype(str)
    frame["customer_id"] = frame["customer_id"].astype(str)
    frame["campaign_id"] = frame["campaign_id"].where(frame["campaign_id"].notna(), NO_CAMPAIGN).astype(str)
    frame["at"] = pd.to_datetime(frame["at"], utc=True, format="ISO8601")
    frame["send_at"] = pd.to_datetime(frame["send_at"], utc=True, format="ISO8601")
    frame["propensity"] = pd.to_numeric(frame["propensity"], errors="coerce")
    frame["policy_hour"] = pd.to_numeric(frame["policy_hour"], errors="coerce")
    frame["allowed_hours"] = pd.to_numeric(frame["allowed_hours"], errors="coerce")
    return frame.sort_values("at", kind="stable").reset_index(drop=True)


def parse_since(value: str | date | datetime | pd.Timestamp | None) -> pd.Timestamp | None:
    """`--since` as a UTC time: a date or a time, in UTC where it names no zone."""
    if value is None:
        return None
    try:
        stamp = pd.Timestamp(value)
    except ValueError as error:
        raise ValueError(f"--since {value!r} is not a date or time (e.g. 2026-11-01 or 2026-11-01T08:00Z)") from error
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _send_outcomes(
    sent: pd.DataFrame,
    email_events: pd.DataFrame | None,
    offer_events: pd.DataFrame | None,
    offers: pd.DataFrame | None,
    settings: Settings,
    as_of: pd.Timestamp,
) -> pd.DataFrame:
    """The sent decisions with their actual send time and, where each window has closed, their human opens,
    clicks (0 or 1 each, within the label window) and conversions (of the exposures carrying their id)."""
    out = sent.copy()
    out["sent_at"] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns, UTC]")
    for metric in SEND_TIME_METRICS:
        out[metric] = np.nan
    if email_events is None or email_events.empty or not email_events["decision_id"].notna().any():
        return out
    labels = label_sends(email_events, settings.label_window_hours)
    sends = labels.sends.dropna(subset=["decision_id"]).drop_duplicates("decision_id").set_index("decision_id")
    out["sent_at"] = out["decision_id"].map(sends["send_at"])
    window = pd.Timedelta(hours=settings.label_window_hours)
    clicks = labels.clicks[~labels.clicks["is_machine"]]
    clicks = clicks.assign(send_at=clicks["message_id"].map(sends.reset_index().set_index("message_id")["send_at"]))
    clicked = set(
        clicks.loc[(clicks["occurred_at"] - clicks["send_at"]).between(pd.Timedelta(0), window), "message_id"]
    )
    message = out["decision_id"].map(sends["message_id"])
    opened = out["decision_id"].map(sends["first_human_open_at"]).notna() | message.isin(clicked)
    closed = (out["sent_at"] + window <= as_of).to_numpy()
    out.loc[closed, "opens"] = opened[closed].astype(float)
    out.loc[closed, "clicks"] = message[closed].isin(clicked).astype(float)
    conversions, closes = _conversions(offer_events, offers, settings)
    conversion_closed = out["sent_at"].notna() & (out["decision_id"].map(closes).fillna(out["sent_at"]) <= as_of)
    conversion_closed &= out["sent_at"] + pd.Timedelta(days=settings.conversion_window_days) <= as_of
    out.loc[conversion_closed, "conversions"] = out.loc[conversion_closed, "decision_id"].map(conversions).fillna(0.0)
    return out


def _conversions(
    offer_events: pd.DataFrame | None, offers: pd.DataFrame | None, settings: Settings
) -> tuple[pd.Series, pd.Series]:
    """(conversions per decision id, when the last of each decision's conversion windows closes).

    A `converted` event goes to the latest `exposed` event of the same customer and offer before it (last touch),
    if it came within that offer's conversion window; it counts for the decision whose id that exposure carries.
    """
    if offer_events is None or offer_events.empty:
        return pd.Series(dtype=float), pd.Series(dtype="datetime64[ns, UTC]")
    exposed = offer_events.loc[
        offer_events["event"] == "exposed", ["customer_id", "offer_id", "occurred_at", "decision_id"]
    ]
    exposed = exposed.dropna(subset=["customer_id", "offer_id", "occurred_at"]).reset_index(drop=True)
    days = offer_windows(offers, exposed["offer_id"], settings.conversion_window_days).to_numpy()
    exposed["closes"] = exposed["occurred_at"] + pd.to_timedelta(days, unit="D")
    converted = offer_events.loc[offer_events["event"] == "converted", ["customer_id", "offer_id", "occurred_at"]]
    converted = converted.dropna().sort_values("occurred_at", kind="stable")
    touched = pd.merge_asof(
        converted,
        exposed.sort_values("occurred_at", kind="stable"),
        on="occurred_at",
        by=["customer_id", "offer_id"],
        direction="backward",
    )
    credited = touched[touched["decision_id"].notna() & (touched["occurred_at"] <= touched["closes"])]
    counts = credited.groupby("decision_id").size().astype(float)
    return counts, exposed.dropna(subset=["decision_id"]).groupby("decision_id")["closes"].max()


def _window_outcomes(decisions: pd.DataFrame, site_events: pd.DataFrame, window: pd.Timedelta) -> pd.DataFrame:
    """Each decision's site sessions, purchases and revenue in [at, at + window)."""
    out = decisions.copy()
    codes, _ = pd.factorize(pd.concat([out["customer_id"], site_events["customer_id"].astype(str)]))
    customer = codes[: len(out)]
    start = _seconds(out["at"])
    end = start + int(window.total_seconds())
    for metric, event, weight in (
        ("site sessions", "session_start", None),
        ("purchases", "purchase", None),
        ("revenue", "purchase", "value"),
    ):
        rows = (site_events["event"] == event).to_numpy()
        keys = codes[len(out) :][rows].astype(np.int64) * 10**10 + _seconds(site_events["occurred_at"][rows])
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        values = np.nan_to_num(site_events[weight].to_numpy(dtype=float)[rows][order]) if weight else np.ones(len(keys))
        cumulative = np.r_[0.0, np.cumsum(values)]
        base = customer.astype(np.int64) * 10**10
        low = np.searchsorted(keys, base + start, side="left")
        high = np.searchsorted(keys, base + end, side="left")
        out[metric] = cumulative[high] - cumulative[low]
    return out


def _seconds(times: pd.Series) -> np.ndarray:
    """UTC times as whole seconds since the epoch (rounded down)."""
    stamps = pd.to_datetime(times, utc=True).dt.tz_convert(None).to_numpy().astype("datetime64[s]")
    return np.asarray(stamps.astype(np.int64))


# --- the comparisons -------------------------------------------------------------------------------------------
def ips_weights(
    on_policy: np.ndarray, propensity: np.ndarray, allowed_hours: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each send's weight for the policy's own hours (1/p where it went at the policy's hour, else 0) and for a
    uniformly random allowed hour ((1/A)/p, whatever hour it went at). Under the logging policy both have mean 1:
    the policy's hour is sent with probability p, and any one hour h with probability p_h, for which (1/A)/p_h
    makes every hour weigh 1/A."""
    return on_policy / propensity, 1.0 / (allowed_hours * propensity)


def _on_policy(sends: pd.DataFrame) -> np.ndarray:
    """Whether each send went at the hour its policy chose (its send hour, counted from its window's start)."""
    hour = ((sends["send_at"] - sends["at"]) / pd.Timedelta(hours=1)).round()
    return (hour == sends["policy_hour"]).to_numpy()


def _send_time(campaign: str, sends: pd.DataFrame, label_hours: int, as_of: pd.Timestamp) -> list[Comparison]:
    """Chosen hours vs exploration hours on each metric, by self-normalised inverse propensity."""
    if sends.empty:
        return _unmeasurable(campaign, SEND_TIME, SEND_TIME_METRICS, "no sends: every decision was not to send")
    logged = sends[sends["policy_hour"].notna() & sends["allowed_hours"].gt(0) & sends["propensity"].gt(0)]
    if logged.empty:
        why = (
            f"the log does not say the policy's own hour of these {len(sends):,} sends (they were decided before "
            "sendwise logged it), so inverse propensity cannot be applied"
        )
        return _unmeasurable(campaign, SEND_TIME, SEND_TIME_METRICS, why, len(sends))
    if _on_policy(logged).all():
        why = (
            f"no exploration: all {len(logged):,} sends went at the hour sendwise chose (the explore share was 0: "
            "set SENDWISE_EXPLORE_SHARE, or explore_share in the request)"
            if (logged["propensity"] >= 1.0 - 1e-9).all()
            else f"too few decisions: none of the {len(logged):,} sends went at an exploration hour"
        )
        return _unmeasurable(campaign, SEND_TIME, SEND_TIME_METRICS, why, len(logged))
    back = logged[logged["sent_at"].notna()]
    if back.empty:
        why = (
            f"no events back: none of the {len(logged):,} sends came back on a `sent` email event carrying its "
            "decision_id (the sending system passes it through: docs/data-contract.md)"
        )
        return _unmeasurable(campaign, SEND_TIME, SEND_TIME_METRICS, why, len(logged))
    on_time = (back["sent_at"] >= back["send_at"] - EARLY_SEND) & (
        back["sent_at"] < back["send_at"] + pd.Timedelta(hours=1)
    )
    back = back[on_time]
    if back.empty:
        why = "no send went out in the hour decided for it: the hours compared are not the ones that were sent"
        return _unmeasurable(campaign, SEND_TIME, SEND_TIME_METRICS, why, len(logged))
    found = []
    for metric in SEND_TIME_METRICS:
        rows = back[back[metric].notna()]
        if rows.empty:
            closes = label_hours if metric != "conversions" else "conversion"
            why = (
                f"no window closed yet: the {closes}-hour windows of the {len(back):,} sends end after the "
                f"data's end ({text(as_of)})"
                if metric != "conversions"
                else f"no conversion window of the {len(back):,} sends has closed by the data's end ({text(as_of)})"
            )
            found.extend(_unmeasurable(campaign, SEND_TIME, [metric], why, len(back)))
            continue
        if metric == "conversions" and not rows["offer_ids"].map(len).gt(0).any():
            why = "no offers: none of these emails carried an offer, so none could convert"
            found.extend(_unmeasurable(campaign, SEND_TIME, [metric], why, len(rows)))
            continue
        on = _on_policy(rows)
        off = int((~on).sum())
        if off < MIN_EXPLORED:
            why = (
                f"too few decisions: {off:,} measured sends went at an exploration hour, at least {MIN_EXPLORED} "
                "are needed"
            )
            found.extend(_unmeasurable(campaign, SEND_TIME, [metric], why, len(rows)))
            continue
        own, uniform = ips_weights(on, rows["propensity"].to_numpy(float), rows["allowed_hours"].to_numpy(float))
        reward = rows[metric].to_numpy(float)
        arms = (own * reward, own, uniform * reward, uniform)
        found.append(
            _figure(
                campaign, SEND_TIME, metric, arms, rows["customer_id"].to_numpy(), len(rows), off, "the random hours"
            )
        )
    return found


def _holdout(
    campaign: str, decisions: pd.DataFrame, has_site: bool, window: pd.Timedelta, as_of: pd.Timestamp
) -> list[Comparison]:
    """Sent vs holdout, intention to treat, on each site metric."""
    kinds = decisions["kind"]
    eligible = decisions[kinds.isin(HELD_OUT_KINDS)]
    if eligible.empty:
        named = ", ".join(sorted(set(kinds)))
        why = f"{named} email is never held out: only promotional and newsletter campaigns have a holdout"
        return _unmeasurable(campaign, HOLDOUT, HOLDOUT_METRICS, why, len(decisions))
    held = int(eligible["holdout"].sum())
    if held == 0:
        why = (
            f"no holdout: none of the {len(eligible):,} decisions was held out (SENDWISE_HOLDOUT_SHARE was 0 when "
            "they were decided)"
        )
        return _unmeasurable(campaign, HOLDOUT, HOLDOUT_METRICS, why, len(eligible))
    if not has_site:
        why = "no events back: the raw store has no site events (sessions and purchases come from site_events)"
        return _unmeasurable(campaign, HOLDOUT, HOLDOUT_METRICS, why, len(eligible))
    closed = eligible[eligible["at"] + window <= as_of]
    if closed.empty:
        why = (
            f"no window closed yet: the {window.days}-day windows of the {len(eligible):,} decisions end after the "
            f"data's end ({text(as_of)})"
        )
        return _unmeasurable(campaign, HOLDOUT, HOLDOUT_METRICS, why, len(eligible))
    held = int(closed["holdout"].sum())
    if held < MIN_HOLDOUT or held == len(closed):
        why = (
            f"too few decisions: {held:,} held-out and {len(closed) - held:,} other decisions have closed windows; "
            f"at least {MIN_HOLDOUT} of each are needed"
        )
        return _unmeasurable(campaign, HOLDOUT, HOLDOUT_METRICS, why, len(closed))
    treated = (~closed["holdout"]).to_numpy(float)
    control = closed["holdout"].to_numpy(float)
    found = []
    for metric in HOLDOUT_METRICS:
        y = closed[metric].to_numpy(float)
        arms = (y * treated, treated, y * control, control)
        found.append(
            _figure(campaign, HOLDOUT, metric, arms, closed["customer_id"].to_numpy(), len(closed), held, "the holdout")
        )
    return found


def measure_lift(
    settings: Settings, since: str | date | datetime | pd.Timestamp | None = None, progress: bool = False
) -> LiftReport:
    """Realized lift per campaign (and over all campaigns) from the home's decision log and raw store.

    `since` keeps the decisions from that time on (a date or a time; UTC where it names no zone).
    """
    start = parse_since(since)
    decisions = read_decisions(settings, progress)
    if start is not None:
        decisions = decisions[decisions["at"] >= start].reset_index(drop=True)
    report = LiftReport(comparisons=[], since=start, decisions=len(decisions))
    if decisions.empty:
        where = f" since {text(start)}" if start is not None else ""
        report.notes.append(f"no decisions in the log under {settings.decisions_dir}{where}: nothing to measure")
        return report
    report.first, report.last = decisions["at"].min(), decisions["at"].max()
    as_of = resolve_as_of(settings).time
    report.as_of = as_of
    with tqdm(total=4, desc="joining the events", disable=not progress) as bar:
        email_events = load_table(settings, "email_events")
        site_events = load_table(settings, "site_events")
        offer_events = load_table(settings, "offer_events")
        offers = load_table(settings, "offers")
        bar.update(1)
        sent = decisions[decisions["send"] & decisions["send_at"].notna()]
        sends = _send_outcomes(sent, email_events, offer_events, offers, settings, as_of)
        bar.update(1)
        window = pd.Timedelta(days=settings.conversion_window_days)
        has_site = site_events is not None and not site_events.empty
        windows = _window_outcomes(decisions, site_events, window) if has_site else decisions
        bar.update(1)
        groups = sorted(decisions["campaign_id"].unique(), key=lambda c: (c == NO_CAMPAIGN, c))
        if len(groups) > 1:
            groups.append(ALL_CAMPAIGNS)
        for campaign in groups:
            own_sends = sends if campaign == ALL_CAMPAIGNS else sends[sends["campaign_id"] == campaign]
            own_windows = windows if campaign == ALL_CAMPAIGNS else windows[windows["campaign_id"] == campaign]
            report.comparisons.extend(_send_time(campaign, own_sends, settings.label_window_hours, as_of))
            report.comparisons.extend(_holdout(campaign, own_windows, has_site, window, as_of))
        bar.update(1)
    unmatched = int(sends["sent_at"].isna().sum())
    if unmatched:
        report.notes.append(
            f"{unmatched:,} of {len(sends):,} sends have not come back on a `sent` event carrying their decision_id"
        )
    return report
