"""Model quality against a simulated world's ground truth, beside the baselines the market uses.

For a 24-hour window that starts when the data ends, over customers with email consent, without exploration:
- send-time efficiency = sum of the true open probability at the chosen hour / sum at each customer's best
  hour; beside it sendwise under a 10% per-hour cap (decided in batches of up to 10,000, the API's most: a
  cap is a share of one batch) and the best any assignment under that cap could do (the truth's own), a
  random hour, the best single UTC hour for everyone, each customer's most frequent past engagement hour
  (human opens and clicks) in local time, and a strong heuristic: each customer's kernel-smoothed histogram
  of human opens, clicks and site sessions by local hour, weekdays and weekends apart;
- how long deciding takes, with the cap and without it, on the same recipients;
- offer efficiency = sum of the true expected value of the top non-control offer / sum of the best one;
  beside it a random offer and the best single offer for everyone;
- the open model's AUC on outcomes drawn from the true probabilities, beside the true probabilities' AUC on
  the same draws, mean predicted over mean true probability, and a reliability curve (deciles of the
  prediction; a table and reports/reliability.png in the home);
- send-time efficiency apart for customers who allow profiling and those who do not (their zone's rhythm);
- the machine-open detector's precision and recall against the world's truth, beside the ESP's flag alone.

The suites at the end of this module (`run_suite`) simulate worlds the models never saw and run each through
`sendwise pipeline` and `sendwise evaluate` in processes of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import Progress

from features.labels import label_sends
from features.localtime import is_weekend, local_hour_weekday
from sendwise.raw import load_table
from sendwise.settings import Settings
from sendwise.simulator import simulate, simulation_options
from sendwise.simulator.truth import World
from serving.assign import assign_hours, hour_capacity
from serving.engine import Engine
from serving.schemas import MAX_RECIPIENTS, Constraints, DecideRequest, Decision, Recipient
from training.baselines import greedy_hours
from training.models import auc

BATCH = MAX_RECIPIENTS
WINDOW_HOURS = 24
CAP_SHARE = 0.1
WARM_UP = 50
# The heuristic baseline: a Gaussian kernel over the circular clock, the other day type's activity counted
# at this weight (weekend histograms are thin), and the population's histogram as a prior worth this many events.
KERNEL_SIGMA_HOURS = 1.5
OTHER_DAY_TYPE_WEIGHT = 0.3
POPULATION_PRIOR_EVENTS = 1.0
RELIABILITY_BINS = 10
SESSIONS_KERNEL = "kernel-smoothed histogram of site sessions alone, weekends apart"


@dataclass(frozen=True)
class Target:
    """A quality bar and whether the evaluation met it."""

    name: str
    value: float
    bar: str
    met: bool


@dataclass
class Evaluation:
    customers: int
    window_start: pd.Timestamp
    realistic: bool = False
    send_time: dict[str, float] = field(default_factory=dict)
    offer: dict[str, float] = field(default_factory=dict)
    open_model: dict[str, float] = field(default_factory=dict)
    proxied: dict[str, float] = field(default_factory=dict)
    cap: dict[str, float] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    detector: dict[str, float] = field(default_factory=dict)
    reliability: pd.DataFrame | None = None
    reliability_plot: Path | None = None
    targets: list[Target] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str, str]]:
        out = [("send time", k, f"{v:.4f}") for k, v in self.send_time.items()]
        out += [("per-hour cap", k, f"{v:.4f}") for k, v in self.cap.items()]
        out += [("next best offer", k, f"{v:.4f}") for k, v in self.offer.items()]
        out += [("open propensity", k, f"{v:.4f}") for k, v in self.open_model.items()]
        out += [
            ("proxied or not", k, f"{v:,.0f}" if k.endswith("customers") else f"{v:.4f}")
            for k, v in self.proxied.items()
        ]
        if self.reliability is not None:
            out += [
                ("reliability", f"decile {i + 1}: mean predicted / mean true", f"{r.predicted:.3f} / {r.true:.3f}")
                for i, r in enumerate(self.reliability.itertuples())
            ]
        out += [
            ("machine opens and clicks", k, f"{v:,.0f}" if k.endswith(("checked", "none")) else f"{v:.4f}")
            for k, v in self.detector.items()
        ]
        out += [("decide time", k, f"{v:.2f} s") for k, v in self.timing.items()]
        return out

    def as_dict(self) -> dict[str, object]:
        """Every figure as plain data (what `sendwise evaluate --json` writes)."""
        return {
            "customers": self.customers,
            "window_start": str(self.window_start),
            "realistic": self.realistic,
            "send_time": self.send_time,
            "offer": self.offer,
            "open_model": self.open_model,
            "proxied": self.proxied,
            "cap": self.cap,
            "detector": self.detector,
            "timing": self.timing,
            "targets": [{"name": t.name, "value": t.value, "bar": t.bar, "met": t.met} for t in self.targets],
        }

    def target_rows(self) -> list[tuple[str, str, str, str]]:
        """(target, value, bar, met or missed) for every bar this kind of world is judged by."""
        return [(t.name, f"{t.value:.4f}", t.bar, "met" if t.met else "MISSED") for t in self.targets]


def _decide_all(
    engine: Engine,
    ids: list[str],
    start: pd.Timestamp,
    progress: bool,
    constraints: Constraints | None = None,
    label: str = "deciding",
) -> tuple[list[Decision], float]:
    """Decisions for `ids` in batches of the API's most, and the seconds the decide calls took."""
    decisions: list[Decision] = []
    seconds = 0.0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(label, total=len(ids))
        for i in range(0, len(ids), BATCH):
            chunk = ids[i : i + BATCH]
            request = DecideRequest(
                recipients=[Recipient(customer_id=c) for c in chunk],
                window_start=start.to_pydatetime(),
                window_hours=WINDOW_HOURS,
                explore_share=0.0,
                k_offers=50,
                constraints=constraints,
            )
            began = time.perf_counter()
            decisions.extend(engine.decide(request).decisions)
            seconds += time.perf_counter() - began
            bar.advance(task, len(chunk))
    return decisions, seconds


def _window_hours(start: pd.Timestamp, ids: list[str], zone_of: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """[n, window]: each window hour's local clock hour and whether it falls on a local weekend."""
    n = len(ids)
    zones = pd.Series(ids).map(zone_of).fillna("UTC")
    stamps = pd.date_range(start, periods=WINDOW_HOURS, freq="h").tz_convert(None).to_numpy()
    hour, weekday = local_hour_weekday(
        pd.Series(np.tile(stamps, n)).dt.tz_localize("UTC"), pd.Series(np.repeat(zones.to_numpy(), WINDOW_HOURS))
    )
    return hour.reshape(n, WINDOW_HOURS).astype(np.int64), is_weekend(weekday).reshape(n, WINDOW_HOURS)


def most_frequent_engagement_hour(settings: Settings, customers: pd.DataFrame) -> pd.Series:
    """Each customer's most frequent local hour of past human opens and clicks (the Braze/Bloomreach rule)."""
    events = load_table(settings, "email_events")
    if events is None or events.empty:
        return pd.Series(dtype=float)
    labels = label_sends(events, settings.label_window_hours)
    human = labels.opens.loc[~labels.opens["is_machine"], ["customer_id", "occurred_at"]]
    clicks = labels.clicks.loc[~labels.clicks["is_machine"], ["customer_id", "occurred_at"]]
    both = pd.concat([human, clicks], ignore_index=True)
    zones = both["customer_id"].map(customers.set_index("customer_id")["timezone"]).fillna("UTC")
    hour, _ = local_hour_weekday(both["occurred_at"], zones)
    both["hour"] = hour
    counts = both.groupby(["customer_id", "hour"]).size().reset_index(name="n")
    top = counts.sort_values(["customer_id", "n", "hour"], ascending=[True, False, True]).drop_duplicates("customer_id")
    return top.set_index("customer_id")["hour"]


def _circular_smooth(histograms: np.ndarray, sigma: float = KERNEL_SIGMA_HOURS) -> np.ndarray:
    """Gaussian kernel smoothing along the last axis (24 clock hours), wrapping midnight."""
    offsets = np.arange(-12, 12)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    out = np.zeros_like(histograms, dtype=float)
    for offset, weight in zip(offsets, weights, strict=True):
        out += weight * np.roll(histograms, offset, axis=-1)
    return out


def engagement_histograms(
    settings: Settings, customers: pd.DataFrame, sessions_only: bool = False
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each customer's kernel-smoothed counts of human opens, clicks and site sessions (or of sessions alone) by
    local hour, [2, 24] with weekdays in row 0 and weekends in row 1; and the population's smoothed histogram
    as shares.

    Only customers who gave profiling consent are profiled, as in the service.
    """
    profiled = customers.loc[customers["consent_profiling"].astype(bool), ["customer_id", "timezone"]]
    zone_of = profiled.set_index("customer_id")["timezone"]
    parts = []
    events = None if sessions_only else load_table(settings, "email_events")
    if events is not None and len(events):
        labels = label_sends(events, settings.label_window_hours)
        parts.append(labels.opens.loc[~labels.opens["is_machine"], ["customer_id", "occurred_at"]])
        parts.append(labels.clicks.loc[~labels.clicks["is_machine"], ["customer_id", "occurred_at"]])
    site = load_table(settings, "site_events")
    if site is not None and len(site):
        parts.append(site.loc[site["event"] == "session_start", ["customer_id", "occurred_at"]])
    if not parts:
        return {}, np.full((2, 24), 1.0 / 48)
    activity = pd.concat(parts, ignore_index=True)
    activity = activity[activity["customer_id"].isin(zone_of.index)].reset_index(drop=True)
    hour, weekday = local_hour_weekday(activity["occurred_at"], activity["customer_id"].map(zone_of))
    codes, names = pd.factorize(activity["customer_id"])
    counts = np.zeros((len(names), 2, 24))
    np.add.at(counts, (codes, is_weekend(weekday).astype(np.int64), hour.astype(np.int64)), 1.0)
    smooth = _circular_smooth(counts)
    population = smooth.sum(axis=0)
    total = population.sum()
    population = population / total if total > 0 else np.full((2, 24), 1.0 / 48)
    return {str(name): smooth[i] for i, name in enumerate(names)}, population


def kernel_histogram_hours(
    settings: Settings,
    customers: pd.DataFrame,
    ids: list[str],
    local_hour: np.ndarray,
    weekend: np.ndarray,
    sessions_only: bool = False,
) -> np.ndarray:
    """For each customer, the window hour whose local hour and day type their smoothed histogram rates highest.

    score = own[day type, hour] + 0.3 × own[other day type, hour] + 1 event × the population's share there, so
    that sparse histories lean on the population and customers without history fall back to it entirely.
    """
    histograms, population = engagement_histograms(settings, customers, sessions_only)
    n = len(ids)
    day = weekend.astype(np.int64)
    prior = POPULATION_PRIOR_EVENTS * population[day, local_hour]
    own = np.zeros((n, WINDOW_HOURS))
    for i, customer_id in enumerate(ids):
        histogram = histograms.get(customer_id)
        if histogram is not None:
            own[i] = histogram[day[i], local_hour[i]] + OTHER_DAY_TYPE_WEIGHT * histogram[1 - day[i], local_hour[i]]
    return (own + prior).argmax(axis=1)


def _capped_efficiency(
    sent: list[Decision],
    capped: list[Decision],
    truth: np.ndarray,
    predicted: np.ndarray,
    start: pd.Timestamp,
    batches: list[np.ndarray],
    label: str,
) -> dict[str, float]:
    """Under a 10% cap per batch (`batches`: rows of `sent`): sendwise's efficiency (a recipient the cap left
    unsent counts 0), a first-come greedy assignment of sendwise's own predictions under the same caps, and the
    best assignment any policy could make knowing the truth."""
    hour_of = {d.customer_id: int((pd.Timestamp(d.send_at) - start) / pd.Timedelta(hours=1)) for d in capped if d.send}
    n = len(sent)
    chosen = np.array([hour_of.get(d.customer_id, -1) for d in sent])
    got = np.where(chosen >= 0, truth[np.arange(n), np.maximum(chosen, 0)], 0.0).sum()
    greedy = best = 0.0
    for rows in batches:
        everywhere = np.ones((len(rows), truth.shape[1]), dtype=bool)
        capacity = hour_capacity(CAP_SHARE, len(rows))
        hours = greedy_hours(predicted[rows], everywhere, capacity)
        greedy += truth[rows[hours >= 0], hours[hours >= 0]].sum()
        best += assign_hours(truth[rows], everywhere, capacity).total
    denominator = truth.max(axis=1).sum()
    return {
        f"sendwise with a 10% per-hour cap{label}": float(got / denominator),
        f"greedy first-come on sendwise's predictions, same cap{label}": float(greedy / denominator),
        f"best possible with the same cap (the truth's own assignment){label}": float(best / denominator),
    }


def _moved_share(decisions: list[Decision], sent: int) -> float:
    moved = sum(any(r.startswith("moved by the per-hour cap") for r in d.reasons) for d in decisions if d.send)
    return moved / sent


def _send_time_baselines(
    result: Evaluation,
    settings: Settings,
    raw_customers: pd.DataFrame,
    sent: list[Decision],
    truth: np.ndarray,
    start: pd.Timestamp,
) -> None:
    """sendwise's send-time efficiency (unconstrained) and the baselines', into `result.send_time`."""
    ids = [d.customer_id for d in sent]
    n = len(ids)
    denominator = truth.max(axis=1).sum()
    chosen = np.array([int((pd.Timestamp(d.send_at) - start) / pd.Timedelta(hours=1)) for d in sent])
    result.send_time["sendwise"] = float(truth[np.arange(n), chosen].sum() / denominator)
    result.send_time["random hour"] = float(truth.mean(axis=1).sum() / denominator)
    result.send_time["best single UTC hour"] = float(truth.sum(axis=0).max() / denominator)
    frequent = most_frequent_engagement_hour(settings, raw_customers)
    local, weekend = _window_hours(start, ids, raw_customers.set_index("customer_id")["timezone"])
    habit = pd.Series(ids).map(frequent).to_numpy()
    value = truth.mean(axis=1).copy()
    for i in np.flatnonzero(~pd.isna(habit)):
        match = np.flatnonzero(local[i] == int(habit[i]))
        if len(match):
            value[i] = truth[i, match[0]]
    result.send_time["most frequent past engagement hour"] = float(value.sum() / denominator)
    kernel = kernel_histogram_hours(settings, raw_customers, ids, local, weekend)
    result.send_time["kernel-smoothed engagement histogram, weekends apart"] = float(
        truth[np.arange(n), kernel].sum() / denominator
    )
    sessions = kernel_histogram_hours(settings, raw_customers, ids, local, weekend, sessions_only=True)
    result.send_time[SESSIONS_KERNEL] = float(truth[np.arange(n), sessions].sum() / denominator)
    _send_time_by_history(result, raw_customers, sent, truth, chosen)


def _send_time_by_history(
    result: Evaluation, raw_customers: pd.DataFrame, sent: list[Decision], truth: np.ndarray, chosen: np.ndarray
) -> None:
    """sendwise's send-time efficiency for customers on their own history and for those on their zone's."""
    profiled = raw_customers.set_index("customer_id")["consent_profiling"].fillna(False).astype(bool)
    own = pd.Series([d.customer_id for d in sent]).map(profiled).fillna(False).to_numpy(dtype=bool)
    rows = np.arange(len(sent))
    for label, mask in (
        ("customers who allow profiling (their own history)", own),
        ("customers who do not (their time zone's rhythm)", ~own),
    ):
        if mask.any():
            got = truth[rows[mask], chosen[mask]].sum() / truth[mask].max(axis=1).sum()
            result.send_time[f"sendwise, {label}: {int(mask.sum())}"] = float(got)


def _precision_recall(out: dict[str, float], name: str, detected: pd.Series, actual: pd.Series) -> None:
    """Precision and recall; where the truth has nothing to find, how many were found anyway."""
    detected, actual = detected.astype(bool), actual.astype(bool)
    if not actual.any():
        out[f"{name}: found where the truth has none"] = float(detected.sum())
        return
    hits = float((detected & actual).sum())
    out[f"{name} precision"] = hits / max(float(detected.sum()), 1.0)
    out[f"{name} recall"] = hits / float(actual.sum())


def own_opens_hidden(world: World) -> pd.Series:
    """The truth of which customers read behind a privacy proxy that carries their own opens (a realistic
    world's proxied customers; in a classic world a proxied customer's own opens carry their device's agent)."""
    realism = world.meta.get("realism") or {}
    hidden = world.customer_params["is_mpp"].astype(bool) & bool(realism.get("proxy_human_opens"))
    return pd.Series(hidden.to_numpy(), index=world.customer_params["customer_id"])


def detector_quality(settings: Settings, world: World) -> dict[str, float]:
    """Precision and recall of the machine-open detector against the truth, beside the ESP's flag alone.

    Per recipient: do their own opens come through a privacy proxy (so that none of their opens can be
    read)? Per open, among the recipients the detector does not call proxied: is it a machine's (a person's
    own open through a proxy counts as a person's)? Per click: a scanner's, or a person's?
    """
    events = load_table(settings, "email_events")
    if events is None or events.empty:
        return {}
    labels = label_sends(events, settings.label_window_hours)
    hidden = own_opens_hidden(world)
    recipients = labels.recipients
    out: dict[str, float] = {"recipients checked": float(len(recipients))}
    actual = pd.Series(recipients.index.isin(hidden.index[hidden]), index=recipients.index)
    out["proxied share (truth)"] = float(actual.mean())
    _precision_recall(out, "proxied-recipient detector", recipients["proxied"], actual)
    truth = world.email_opens().drop_duplicates("event_id").set_index("event_id")["is_machine"]
    opens = labels.opens.join(truth.rename("true_machine"), on="event_id", how="inner")
    opens = opens[~opens["customer_id"].isin(labels.proxied_customers)]
    out["opens of unproxied recipients checked"] = float(len(opens))
    out["machine share of their opens"] = float(opens["true_machine"].mean())
    _precision_recall(out, "machine-open detector", opens["is_machine"], opens["true_machine"])
    _precision_recall(out, "ESP flag alone", opens["flagged"], opens["true_machine"])
    if world.truth_dir is not None and (world.truth_dir / "email_clicks.parquet").exists():
        truth = world.email_clicks().drop_duplicates("event_id").set_index("event_id")["is_machine"]
        clicks = labels.clicks.join(truth.rename("true_machine"), on="event_id", how="inner")
        out["clicks checked"] = float(len(clicks))
        out["machine share of clicks"] = float(clicks["true_machine"].mean())
        _precision_recall(out, "machine-click detector", clicks["is_machine"], clicks["true_machine"])
    return out


def _by_proxy(
    result: Evaluation,
    world: World,
    ids: list[str],
    truth: np.ndarray,
    predicted: np.ndarray,
    chosen: np.ndarray,
    draws: np.ndarray,
) -> None:
    """Send-time efficiency, calibration and AUC apart for proxied recipients and the others."""
    hidden = own_opens_hidden(world)
    proxied = pd.Series(ids).isin(hidden.index[hidden]).to_numpy()
    rows = np.arange(len(ids))
    for label, mask in (("proxied", proxied), ("not proxied", ~proxied)):
        if not mask.any():
            continue
        result.proxied[f"{label}: customers"] = float(mask.sum())
        best = truth[mask].max(axis=1).sum()
        result.proxied[f"{label}: send-time efficiency"] = float(truth[rows[mask], chosen[mask]].sum() / best)
        result.proxied[f"{label}: mean predicted / mean true"] = float(predicted[mask].mean() / truth[mask].mean())
        own = auc(draws[mask].ravel(), predicted[mask].ravel())
        result.proxied[f"{label}: AUC ratio"] = own / auc(draws[mask].ravel(), truth[mask].ravel())


def is_realistic(world: World) -> bool:
    """A world with real mail's behaviours (proxied opens, held-out rhythms), judged by the realistic bars."""
    realism = world.meta.get("realism") or {}
    return bool(realism.get("proxy_human_opens")) or realism.get("rhythms", "classic") != "classic"


def targets(result: Evaluation) -> list[Target]:
    """The bars this kind of world is judged by (README, "How good it is")."""
    send = result.send_time.get("sendwise", float("nan"))
    calibration = result.open_model.get("mean predicted / mean true", float("nan"))
    ratio = result.open_model.get("AUC ratio", float("nan"))
    offer = result.offer.get("sendwise", float("nan"))
    if not result.realistic:
        return [
            Target("send-time efficiency", send, ">= 0.94", send >= 0.94),
            Target("offer efficiency", offer, ">= 0.90", offer >= 0.90),
            Target("open model AUC / true AUC", ratio, ">= 0.955", ratio >= 0.955),
            Target("mean predicted / mean true", calibration, "within ±6%", abs(calibration - 1) <= 0.06),
        ]
    margin = send - result.send_time.get(SESSIONS_KERNEL, float("nan"))
    proxied = result.proxied.get("proxied: mean predicted / mean true", float("nan"))
    return [
        Target("send-time efficiency", send, ">= 0.92", send >= 0.92),
        Target("send time over the sessions-only kernel", margin, ">= +0.02", margin >= 0.02),
        Target("mean predicted / mean true", calibration, "within ±5%", abs(calibration - 1) <= 0.05),
        Target("the same, proxied recipients", proxied, "within ±10%", abs(proxied - 1) <= 0.10),
        Target("open model AUC / true AUC", ratio, ">= 0.93", ratio >= 0.93),
        Target("offer efficiency", offer, ">= 0.90", offer >= 0.90),
    ]


def reliability(predicted: np.ndarray, truth: np.ndarray, bins: int = RELIABILITY_BINS) -> pd.DataFrame:
    """Mean predicted and mean true open probability per decile of the prediction (a reliability curve)."""
    frame = pd.DataFrame({"predicted": predicted.ravel(), "true": truth.ravel()})
    frame["bin"] = pd.qcut(frame["predicted"].rank(method="first"), bins, labels=False)
    table = frame.groupby("bin").agg(predicted=("predicted", "mean"), true=("true", "mean"), rows=("true", "size"))
    return table.reset_index(drop=True)


def plot_reliability(table: pd.DataFrame, path: Path) -> Path:
    """The reliability curve as a PNG: predicted against true, with the diagonal of perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    top = float(max(table["predicted"].max(), table["true"].max())) * 1.05
    axis.plot([0, top], [0, top], color="grey", linestyle="--", label="perfectly calibrated")
    axis.plot(table["predicted"], table["true"], marker="o", label="sendwise (deciles of the prediction)")
    axis.set_xlabel("mean predicted open probability")
    axis.set_ylabel("mean true open probability")
    axis.set_title("Open propensity: reliability on the evaluation window")
    axis.legend(loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def _under_caps(
    result: Evaluation,
    engine: Engine,
    sent: list[Decision],
    capped: list[Decision],
    truth: np.ndarray,
    predicted: np.ndarray,
    start: pd.Timestamp,
    zone_of: pd.Series,
    progress: bool,
) -> None:
    """Efficiency under a 10% per-hour cap: the whole set in one batch, then one batch per time zone (where
    everyone's evening is the same hour, so that the cap binds)."""
    n = len(sent)
    ids = [d.customer_id for d in sent]
    result.send_time.update(_capped_efficiency(sent, capped, truth, predicted, start, [np.arange(n)], ""))
    zones = pd.Series(ids).map(zone_of).fillna("UTC")
    batches = [np.asarray(rows) for rows in zones.groupby(zones).indices.values()]
    per_zone: list[Decision] = []
    cap = Constraints(max_share_per_hour=CAP_SHARE)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("deciding one batch per time zone under a 10% cap", total=n)
        for rows in batches:
            per_zone.extend(_decide_all(engine, [ids[i] for i in rows], start, False, cap)[0])
            bar.advance(task, len(rows))
    label = ", one batch per time zone"
    result.send_time.update(_capped_efficiency(sent, per_zone, truth, predicted, start, batches, label))
    result.cap["share of sends moved by a 10% cap, one batch"] = _moved_share(capped, n)
    result.cap["share of sends moved by a 10% cap, one batch per time zone"] = _moved_share(per_zone, n)


def evaluate(settings: Settings, world_dir: Path, progress: bool = True, seed: int = 0) -> Evaluation:
    """Score the home's champions against the world's truth (the home must have run the pipeline on it)."""
    world = World.load(world_dir)
    engine = Engine.load(settings, log_decisions=False)  # what an evaluation decides is never sent
    start = pd.Timestamp(world.end).ceil("h")
    truth_customers = world.customers[world.customers["consent_email"].astype(bool)]
    raw_customers = load_table(settings, "customers")
    if raw_customers is None:
        raise RuntimeError(f"the home {settings.home} has no ingested data: run `sendwise pipeline --data {world_dir}`")
    ids = [c for c in truth_customers["customer_id"] if c in set(raw_customers["customer_id"])]
    _decide_all(engine, ids[:WARM_UP], start, progress=False)  # first reads open files and caches: not timed
    decisions, free_seconds = _decide_all(engine, ids, start, progress)
    capped, capped_seconds = _decide_all(
        engine, ids, start, progress, Constraints(max_share_per_hour=CAP_SHARE), label="deciding under a 10% cap"
    )
    decided = len(ids)
    sent = [d for d in decisions if d.send]
    ids = [d.customer_id for d in sent]
    n = len(ids)
    if n == 0:
        raise RuntimeError(
            f"no customer of {world_dir} may be emailed according to the home {settings.home}: "
            "run `sendwise pipeline --data` on this world into this home first"
        )
    truth = world.hourly_open_probability(ids, start, hours=WINDOW_HOURS)
    predicted = np.array([d.hourly_open_probability for d in sent])
    result = Evaluation(customers=n, window_start=start, realistic=is_realistic(world))
    _send_time_baselines(result, settings, raw_customers, sent, truth, start)
    zone_of = raw_customers.set_index("customer_id")["timezone"]
    _under_caps(result, engine, sent, capped, truth, predicted, start, zone_of, progress)
    result.timing[f"{decided} recipients in one call, no constraints"] = free_seconds
    result.timing[f"{decided} recipients in one call, 10% per-hour cap"] = capped_seconds
    began = time.perf_counter()
    assign_hours(predicted, np.ones_like(predicted, dtype=bool), hour_capacity(CAP_SHARE, n))
    result.timing["the assignment alone, same recipients"] = time.perf_counter() - began

    rng = np.random.default_rng(seed)
    draws = rng.random(truth.shape) < truth
    result.open_model["sendwise AUC"] = auc(draws.ravel(), predicted.ravel())
    result.open_model["true-probability AUC"] = auc(draws.ravel(), truth.ravel())
    result.open_model["AUC ratio"] = result.open_model["sendwise AUC"] / result.open_model["true-probability AUC"]
    result.open_model["mean predicted / mean true"] = float(predicted.mean() / truth.mean())
    chosen = np.array([int((pd.Timestamp(d.send_at) - start) / pd.Timedelta(hours=1)) for d in sent])
    _by_proxy(result, world, ids, truth, predicted, chosen, draws)
    result.reliability = reliability(predicted, truth)
    result.reliability_plot = plot_reliability(result.reliability, settings.reports_dir / "reliability.png")
    result.detector = detector_quality(settings, world)

    offers = world.offers[world.offers["eligible"].astype(bool) & (world.offers["kind"] != "control")]
    if len(offers) and any(d.offers for d in sent):
        offer_ids = offers["offer_id"].tolist()
        value_truth = world.offer_expected_value(ids, offer_ids)
        column = {o: j for j, o in enumerate(offer_ids)}
        picked = np.array([next((column[o.offer_id] for o in d.offers if o.offer_id in column), -1) for d in sent])
        got = np.where(picked >= 0, value_truth[np.arange(n), np.maximum(picked, 0)], value_truth.mean(axis=1))
        top = value_truth.max(axis=1).sum()
        result.offer["sendwise"] = float(got.sum() / top)
        result.offer["random offer"] = float(value_truth.mean(axis=1).sum() / top)
        result.offer["best single offer"] = float(value_truth.sum(axis=0).max() / top)
    result.targets = targets(result)
    return result


# --- the evaluation suites: worlds the models never saw, through the plain commands ------------------------
# The evaluation suites: worlds the models never saw, each run through the plain commands a user runs.
#
# `sendwise evaluate --suite realistic` draws realistic worlds with the held-out rhythm families on seeds used
# nowhere else, at the corners of the realistic ranges (few or many proxied recipients, an ESP that flags half
# or most of the proxy's opens, proxy fetches sooner or later) and at their middle; `--suite classic` the
# classic worlds of seeds 11 and 31. Each world gets a home of its own: `sendwise simulate`, then `sendwise
# pipeline --data WORLD` and `sendwise evaluate --world WORLD --json` as separate processes, exactly as a user
# would run them; the table at the end puts every world's targets side by side.
@dataclass(frozen=True)
class Scenario:
    """One world of a suite: its seed and the simulator's options (`sendwise simulate`'s flags)."""

    name: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict)

    def flags(self) -> str:
        """The `sendwise simulate` flags that draw this world."""
        flags = [f"--seed {self.seed}"]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            flags.append(flag if value is True else f"{flag} {value}")
        return " ".join(flags)


REALISTIC = (
    Scenario("middle", 2001, {"realistic": True}),
    Scenario(
        "30% proxied, ESP flags 50%, fetches soon",
        2002,
        {
            "realistic": True,
            "mpp_share": 0.3,
            "esp_flag_share": 0.5,
            "prefetch_fast_share": 0.6,
            "prefetch_median_hours": 2,
        },
    ),
    Scenario(
        "60% proxied, ESP flags 50%, fetches late",
        2003,
        {
            "realistic": True,
            "mpp_share": 0.6,
            "esp_flag_share": 0.5,
            "prefetch_fast_share": 0.4,
            "prefetch_median_hours": 8,
        },
    ),
    Scenario(
        "30% proxied, ESP flags 90%, fetches late",
        2004,
        {
            "realistic": True,
            "mpp_share": 0.3,
            "esp_flag_share": 0.9,
            "prefetch_fast_share": 0.4,
            "prefetch_median_hours": 8,
        },
    ),
    Scenario(
        "60% proxied, ESP flags 90%, fetches soon",
        2005,
        {
            "realistic": True,
            "mpp_share": 0.6,
            "esp_flag_share": 0.9,
            "prefetch_fast_share": 0.6,
            "prefetch_median_hours": 2,
        },
    ),
)
CLASSIC = (Scenario("classic, seed 11", 11), Scenario("classic, seed 31", 31))
SUITES: dict[str, tuple[Scenario, ...]] = {"realistic": REALISTIC, "classic": CLASSIC}


@dataclass
class WorldResult:
    """One world's evaluation (what `sendwise evaluate --json` wrote) and how long its steps took."""

    scenario: Scenario
    evaluation: dict[str, Any]
    seconds: dict[str, float]

    @property
    def targets(self) -> list[dict[str, Any]]:
        return list(self.evaluation.get("targets", []))

    @property
    def met(self) -> bool:
        return all(t["met"] for t in self.targets)


class SuiteError(RuntimeError):
    """A step of the suite failed: the message names the world, the command and its last output."""


def _run(command: list[str], home: Path, log: Path, what: str) -> float:
    """Run a `sendwise` command with its own home, its output to `log`; the seconds it took. Each world's models
    are its own: they are tracked in its home, never on a shared tracking server, whose champions they would
    replace."""
    environment = {**os.environ, "SENDWISE_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    environment.pop("SENDWISE_MLFLOW_TRACKING_URI", None)
    began = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(command, env=environment, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SuiteError(f"{what} failed (exit {code}); the full output is in {log}:\n{tail}")
    return time.perf_counter() - began


def run_world(scenario: Scenario, work_dir: Path, customers: int, days: int) -> WorldResult:
    """Simulate, run the pipeline and evaluate one world, each in a process of its own."""
    name = scenario.name.replace(" ", "-").replace(",", "").replace("%", "pct")
    world, home = work_dir / name / "world", work_dir / name / "home"
    home.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    rates, realism = simulation_options(**scenario.options)
    simulate(world, customers=customers, days=days, seed=scenario.seed, progress=False, rates=rates, realism=realism)
    seconds["simulate"] = time.perf_counter() - began
    command = [sys.executable, "-m", "sendwise.cli"]
    seconds["pipeline"] = _run(
        [*command, "pipeline", "--data", str(world)], home, home.parent / "pipeline.log", f"{scenario.name}: pipeline"
    )
    result = home.parent / "evaluation.json"
    seconds["evaluate"] = _run(
        [*command, "evaluate", "--world", str(world), "--json", str(result)],
        home,
        home.parent / "evaluate.log",
        f"{scenario.name}: evaluate",
    )
    return WorldResult(scenario, json.loads(result.read_text()), seconds)


def run_suite(
    name: str,
    work_dir: Path,
    customers: int = 10_000,
    days: int = 90,
    progress: Callable[[str], None] | None = None,
) -> list[WorldResult]:
    """Every world of the suite `name`, one after the other."""
    if name not in SUITES:
        raise SuiteError(f"no suite {name!r}: choose one of {', '.join(SUITES)}")
    results = []
    for scenario in SUITES[name]:
        if progress is not None:
            progress(f"{scenario.name} (sendwise simulate {scenario.flags()})")
        results.append(run_world(scenario, work_dir, customers, days))
    return results
