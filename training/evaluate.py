"""Model quality against a simulated world's ground truth, beside the baselines the market uses.

For a 24-hour window that starts when the data ends, over customers with email consent, without exploration:
- send-time efficiency = sum of the true open probability at the chosen hour / sum at each customer's best
  hour; beside it a random hour, the best single UTC hour for everyone, and each customer's most frequent
  past engagement hour (human opens and clicks) in local time;
- offer efficiency = sum of the true expected value of the top non-control offer / sum of the best one;
  beside it a random offer and the best single offer for everyone;
- the open model's AUC on outcomes drawn from the true probabilities, beside the true probabilities' AUC on
  the same draws, and mean predicted over mean true probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import Progress

from features.labels import label_sends
from features.localtime import local_hour_weekday
from sendwise.raw import load_table
from sendwise.settings import Settings
from sendwise.truth import World
from serving.engine import Engine
from serving.schemas import DecideRequest, Recipient
from training.models import auc

BATCH = 5000
WINDOW_HOURS = 24


@dataclass
class Evaluation:
    customers: int
    window_start: pd.Timestamp
    send_time: dict[str, float] = field(default_factory=dict)
    offer: dict[str, float] = field(default_factory=dict)
    open_model: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, str]]:
        out = [("send time", k, f"{v:.4f}") for k, v in self.send_time.items()]
        out += [("next best offer", k, f"{v:.4f}") for k, v in self.offer.items()]
        out += [("open propensity", k, f"{v:.4f}") for k, v in self.open_model.items()]
        return out


def _decide_all(engine: Engine, ids: list[str], start: pd.Timestamp, progress: bool) -> list:
    decisions = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("deciding", total=len(ids))
        for i in range(0, len(ids), BATCH):
            chunk = ids[i : i + BATCH]
            request = DecideRequest(
                recipients=[Recipient(customer_id=c) for c in chunk],
                window_start=start.to_pydatetime(),
                window_hours=WINDOW_HOURS,
                explore_share=0.0,
                k_offers=50,
            )
            decisions.extend(engine.decide(request).decisions)
            bar.advance(task, len(chunk))
    return decisions


def most_frequent_engagement_hour(settings: Settings, customers: pd.DataFrame) -> pd.Series:
    """Each customer's most frequent local hour of past human opens and clicks (the Braze/Bloomreach rule)."""
    events = load_table(settings, "email_events")
    if events is None or events.empty:
        return pd.Series(dtype=float)
    _, opens = label_sends(events, settings.label_window_hours)
    human = opens.loc[~opens["is_machine"], ["customer_id", "occurred_at"]]
    clicks = events.loc[events["event"] == "click", ["customer_id", "occurred_at"]]
    both = pd.concat([human, clicks], ignore_index=True)
    zones = both["customer_id"].map(customers.set_index("customer_id")["timezone"]).fillna("UTC")
    hour, _ = local_hour_weekday(both["occurred_at"], zones)
    both["hour"] = hour
    counts = both.groupby(["customer_id", "hour"]).size().reset_index(name="n")
    top = counts.sort_values(["customer_id", "n", "hour"], ascending=[True, False, True]).drop_duplicates("customer_id")
    return top.set_index("customer_id")["hour"]


def evaluate(settings: Settings, world_dir: Path, progress: bool = True, seed: int = 0) -> Evaluation:
    """Score the home's champions against the world's truth (the home must have run the pipeline on it)."""
    world = World.load(world_dir)
    engine = Engine.load(settings)
    start = pd.Timestamp(world.end).ceil("h")
    truth_customers = world.customers[world.customers["consent_email"].astype(bool)]
    raw_customers = load_table(settings, "customers")
    if raw_customers is None:
        raise RuntimeError(f"the home {settings.home} has no ingested data: run `sendwise pipeline --data {world_dir}`")
    ids = [c for c in truth_customers["customer_id"] if c in set(raw_customers["customer_id"])]
    decisions = _decide_all(engine, ids, start, progress)
    sent = [d for d in decisions if d.send]
    ids = [d.customer_id for d in sent]
    n = len(ids)
    if n == 0:
        raise RuntimeError(
            f"no customer of {world_dir} may be emailed according to the home {settings.home}: "
            "run `sendwise pipeline --data` on this world into this home first"
        )
    truth = world.hourly_open_probability(ids, start, hours=WINDOW_HOURS)
    best = truth.max(axis=1)
    chosen = np.array([int((pd.Timestamp(d.send_at) - start) / pd.Timedelta(hours=1)) for d in sent])
    result = Evaluation(customers=n, window_start=start)
    denominator = best.sum()
    result.send_time["sendwise"] = float(truth[np.arange(n), chosen].sum() / denominator)
    result.send_time["random hour"] = float(truth.mean(axis=1).sum() / denominator)
    result.send_time["best single UTC hour"] = float(truth.sum(axis=0).max() / denominator)
    frequent = most_frequent_engagement_hour(settings, raw_customers)
    zones = pd.Series(ids).map(raw_customers.set_index("customer_id")["timezone"]).fillna("UTC")
    window_hours, _ = local_hour_weekday(
        pd.Series(
            np.tile(pd.date_range(start, periods=WINDOW_HOURS, freq="h").tz_convert(None).to_numpy(), n)
        ).dt.tz_localize("UTC"),
        pd.Series(np.repeat(zones.to_numpy(), WINDOW_HOURS)),
    )
    local = window_hours.reshape(n, WINDOW_HOURS)
    habit = pd.Series(ids).map(frequent).to_numpy()
    value = truth.mean(axis=1).copy()
    for i in np.flatnonzero(~pd.isna(habit)):
        match = np.flatnonzero(local[i] == int(habit[i]))
        if len(match):
            value[i] = truth[i, match[0]]
    result.send_time["most frequent past engagement hour"] = float(value.sum() / denominator)

    predicted = np.array([d.hourly_open_probability for d in sent])
    rng = np.random.default_rng(seed)
    draws = rng.random(truth.shape) < truth
    result.open_model["sendwise AUC"] = auc(draws.ravel(), predicted.ravel())
    result.open_model["true-probability AUC"] = auc(draws.ravel(), truth.ravel())
    result.open_model["AUC ratio"] = result.open_model["sendwise AUC"] / result.open_model["true-probability AUC"]
    result.open_model["mean predicted / mean true"] = float(predicted.mean() / truth.mean())

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
    return result
