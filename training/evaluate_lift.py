"""sendwise against a simulated sending system whose true lift is known: the check of `training.lift`.

`run_scenario` plays weeks of a sender's life after a simulated world's end: the engine decides campaigns for
every customer of the world (exploration and holdout on), the simulator sends at the decided hours and draws
what follows from the world's truth (`sendwise.simulator.feedback`), the export is ingested into a home of its
own, and `measure_lift` measures it. The truth of the same decisions comes with it, so every interval can be
checked against the lift it should contain. `evaluate_lift` does that for many seeds (`sendwise evaluate
--lift`): one world and one trained home, and per seed a new draw of exploration, of the holdout (another
holdout salt) and of everything that happens.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sendwise.settings import Settings
from sendwise.simulator.feedback import LiftTruth, play
from sendwise.simulator.truth import CATEGORIES, World
from serving.constraints import HELD_OUT_KINDS
from serving.decision_log import log_files, read_entries
from serving.engine import Engine
from serving.history import SendHistory
from serving.schemas import Campaign, DecideRequest, Recipient
from training import jobs
from training.lift import (
    ALL_CAMPAIGNS,
    HOLDOUT,
    HOLDOUT_METRICS,
    SEND_TIME,
    SEND_TIME_METRICS,
    Comparison,
    LiftReport,
    measure_lift,
)

BATCH = 10_000
"""Recipients per decide call: the most `/v1/decide` takes."""
TRUTH_COLUMNS = {"site sessions": "sessions", "purchases": "purchases", "revenue": "revenue"}
CHECKED = ((SEND_TIME, "opens"), (HOLDOUT, "purchases"), (HOLDOUT, "revenue"))
"""The figures `evaluate_lift` checks against the truth on every seed."""


@dataclass(frozen=True)
class Scenario:
    """The campaigns of a run: `campaigns` of them, one every `every_days` days from the world's end, each to
    every customer of the world, in a 24-hour window from `first_hour` UTC; two promotional for one newsletter."""

    campaigns: int = 4
    every_days: int = 2
    first_hour: int = 6
    window_hours: int = 24
    explore_share: float = 0.2
    holdout_share: float = 0.1
    k_offers: int = 3


@dataclass(frozen=True)
class Check:
    """One measured figure beside the truth it should contain."""

    comparison: Comparison
    truth: float

    @property
    def covered(self) -> bool:
        low, high = self.comparison.low, self.comparison.high
        return low is not None and high is not None and bool(low <= self.truth <= high)

    @property
    def excludes_zero(self) -> bool:
        return bool(self.comparison.excludes_zero())


@dataclass
class ScenarioResult:
    """A run's measured report, its truth, and the true lift of every comparison."""

    seed: int
    settings: Settings
    report: LiftReport
    truth: LiftTruth
    true_lifts: dict[tuple[str, str, str], float]
    decisions: int
    seconds: float

    def check(self, comparison: str, metric: str, campaign: str | None = None) -> Check:
        """The measured figure (of every campaign together unless `campaign` is given) and its truth."""
        campaign = campaign or overall_campaign(self.report)
        return Check(self.report.find(campaign, comparison, metric), self.true_lifts[(campaign, comparison, metric)])


def overall_campaign(report: LiftReport) -> str:
    """The label of every campaign together: `ALL_CAMPAIGNS`, or the one campaign where there is one."""
    campaigns = report.campaigns()
    return ALL_CAMPAIGNS if ALL_CAMPAIGNS in campaigns else campaigns[0]


@contextmanager
def deciding_into(engine: Engine, settings: Settings) -> Iterator[Engine]:
    """The engine deciding with `settings` (their explore and holdout shares and salt), logging into their home,
    with a send history of that home only; as it was afterwards."""
    saved = engine.settings, engine.history
    engine.settings, engine.history = settings, SendHistory.empty(settings.decisions_dir)
    try:
        yield engine
    finally:
        engine.settings, engine.history = saved


def decide_campaigns(engine: Engine, world: World, scenario: Scenario, seed: int) -> pd.Timestamp:
    """Decide the scenario's campaigns for every customer of `world` (into the engine's home); their start."""
    rng = np.random.default_rng(seed)
    start = world.end
    ids = world.customer_params["customer_id"].astype(str).tolist()
    engine.reseed(seed)
    for k in range(scenario.campaigns):
        window_start = start + pd.Timedelta(days=k * scenario.every_days, hours=scenario.first_hour)
        topic = CATEGORIES[rng.integers(len(CATEGORIES))]
        campaign = Campaign(
            campaign_id=f"lift-{k + 1:02d}", kind="newsletter" if k % 3 == 2 else "promotional", topic=topic
        )
        for lo in range(0, len(ids), BATCH):
            request = DecideRequest(
                recipients=[Recipient(customer_id=c) for c in ids[lo : lo + BATCH]],
                campaign=campaign,
                window_start=window_start.to_pydatetime(),
                window_hours=scenario.window_hours,
                k_offers=scenario.k_offers,
                explore_share=scenario.explore_share,
            )
            engine.decide_payload(request)
    engine.reseed(None)
    return start


def logged_decisions(settings: Settings, window_hours: int) -> pd.DataFrame:
    """The home's logged decisions as `sendwise.simulator.feedback.play` reads them."""
    rows = []
    for path in log_files(settings.decisions_dir):
        for entry, _ in read_entries(path):
            campaign = entry.get("campaign")
            campaign = campaign if isinstance(campaign, dict) else {}
            policy = entry.get("policy_hour")
            start = pd.Timestamp(str(entry["window_start"]))
            shown = entry.get("exposed_offer_ids")
            rows.append(
                {
                    "decision_id": entry["decision_id"],
                    "customer_id": entry["customer_id"],
                    "campaign_id": campaign.get("campaign_id"),
                    "kind": campaign.get("kind") or "promotional",
                    "topic": campaign.get("topic"),
                    "window_start": start,
                    "window_hours": window_hours,
                    "send": bool(entry.get("send")),
                    "send_at": pd.Timestamp(str(entry["send_at"])) if entry.get("send_at") else pd.NaT,
                    "policy_send_at": start + pd.Timedelta(hours=int(str(policy))) if policy is not None else pd.NaT,
                    "offer_ids": [str(o) for o in shown] if isinstance(shown, list) else [],
                    "holdout": bool(entry.get("holdout")),
                }
            )
    return pd.DataFrame(rows)


def true_lifts(truth: LiftTruth) -> dict[tuple[str, str, str], float]:
    """The true lift of every comparison `measure_lift` makes, grouped as it groups them: per campaign and, where
    there are several, over all of them. Send time: expected events at the policy's hours over those at a
    uniformly random hour of the window, over every send. Holdout: the decisions not held out, their expected
    events with the emails they got over without any (the lift on those treated)."""
    found: dict[tuple[str, str, str], float] = {}
    sends, windows = truth.sends, truth.windows
    campaigns = sorted(set(windows["campaign_id"].dropna()))
    groups = [*campaigns, ALL_CAMPAIGNS] if len(campaigns) > 1 else campaigns
    for campaign in groups:
        own = sends if campaign == ALL_CAMPAIGNS else sends[sends["campaign_id"] == campaign]
        for metric in SEND_TIME_METRICS:
            if own[f"uniform_{metric}"].sum() > 0:
                found[(campaign, SEND_TIME, metric)] = float(
                    own[f"own_{metric}"].sum() / own[f"uniform_{metric}"].sum() - 1
                )
        rows = windows if campaign == ALL_CAMPAIGNS else windows[windows["campaign_id"] == campaign]
        treated = rows[rows["kind"].isin(HELD_OUT_KINDS) & ~rows["holdout"]]
        for metric in HOLDOUT_METRICS:
            name = TRUTH_COLUMNS[metric]
            if treated[f"{name}_organic"].sum() > 0:
                found[(campaign, HOLDOUT, metric)] = float(
                    treated[f"{name}_sent"].sum() / treated[f"{name}_organic"].sum() - 1
                )
    return found


def run_scenario(
    engine: Engine,
    world: World,
    settings: Settings,
    home: Path,
    seed: int,
    scenario: Scenario | None = None,
) -> ScenarioResult:
    """Decide the scenario's campaigns with `engine` into a new home (`home`, which must not exist), play them
    through the simulated sending system, ingest what came back there and measure the lift."""
    scenario = scenario or Scenario()
    began = time.perf_counter()
    if home.exists():
        raise FileExistsError(f"{home} exists: a scenario's home must be new, so that its decision log is its own")
    own = settings.model_copy(
        update={
            "home": home,
            "explore_share": scenario.explore_share,
            "holdout_share": scenario.holdout_share,
            "holdout_salt": f"sendwise-lift-check-{seed}",
        }
    )
    with deciding_into(engine, own):
        start = decide_campaigns(engine, world, scenario, seed)
    decisions = logged_decisions(own, scenario.window_hours)
    last = (scenario.campaigns - 1) * scenario.every_days
    end = start + pd.Timedelta(days=last + own.conversion_window_days + 2)
    feedback = play(world, decisions, start, end, seed, window_days=own.conversion_window_days, tag=f"lift{seed}")
    export = home / "export"
    feedback.write(export)
    jobs.ingest(own, export, as_of=feedback.as_of, progress=False)
    report = measure_lift(own)
    return ScenarioResult(
        seed=seed,
        settings=own,
        report=report,
        truth=feedback.truth,
        true_lifts=true_lifts(feedback.truth),
        decisions=len(decisions),
        seconds=time.perf_counter() - began,
    )


@dataclass
class LiftEvaluation:
    """Every seed's checked figures, and how often each interval held the truth and excluded 0."""

    customers: int
    scenario: Scenario
    results: list[ScenarioResult] = field(default_factory=list)

    def checks(self, comparison: str, metric: str) -> list[Check]:
        return [r.check(comparison, metric) for r in self.results]

    def summary(self) -> list[dict[str, object]]:
        rows = []
        for comparison, metric in CHECKED:
            checks = self.checks(comparison, metric)
            rows.append(
                {
                    "comparison": comparison,
                    "metric": metric,
                    "seeds": len(checks),
                    "covered": int(sum(c.covered for c in checks)),
                    "excludes_zero": int(sum(c.excludes_zero for c in checks)),
                    "true_lift_min": float(min(c.truth for c in checks)),
                    "true_lift_max": float(max(c.truth for c in checks)),
                    "mean_half_width": float(
                        np.mean([(c.comparison.high or 0) - (c.comparison.low or 0) for c in checks]) / 2
                    ),
                }
            )
        return rows

    def as_dict(self) -> dict[str, object]:
        return {
            "customers": self.customers,
            "scenario": self.scenario.__dict__,
            "summary": self.summary(),
            "seeds": [
                {
                    "seed": r.seed,
                    "decisions": r.decisions,
                    "seconds": r.seconds,
                    "checks": [
                        {
                            "comparison": c,
                            "metric": m,
                            "truth": r.check(c, m).truth,
                            **r.check(c, m).comparison.__dict__,
                        }
                        for c, m in CHECKED
                    ],
                }
                for r in self.results
            ],
        }


def evaluate_lift(
    work_dir: Path,
    seeds: int = 20,
    customers: int = 10_000,
    days: int = 30,
    scenario: Scenario | None = None,
    world_seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> LiftEvaluation:
    """Simulate one world (`customers` × `days`), run the pipeline on it once, then `run_scenario` for seeds
    0 .. `seeds` − 1, each in a home of its own under `work_dir` (removed once measured)."""
    from sendwise.simulator import simulate
    from sendwise.simulator.options import Realism

    scenario = scenario or Scenario()
    say = progress or (lambda _: None)
    world_dir, home = work_dir / "world", work_dir / "home"
    say(f"simulating a world of {customers:,} customers over {days} days")
    # without the recent-activity effect: the simulated sending system does not follow the visits its emails
    # bring, so in a world with it, its truth would not be the truth of its draws
    realism = Realism(recent_activity=False)
    simulate(world_dir, customers=customers, days=days, seed=world_seed, progress=False, realism=realism)
    settings = Settings(home=home, mlflow_tracking_uri=None)  # its models in its home, never on a shared server
    settings.activate()
    say("running the pipeline on it")
    jobs.pipeline(settings, world_dir, jobs.IngestOptions(), jobs.TrainOptions(), progress=False)
    engine = Engine.load(settings)
    world = World.load(world_dir)
    evaluation = LiftEvaluation(customers=customers, scenario=scenario)
    for seed in range(seeds):
        seed_home = work_dir / f"seed-{seed}"
        result = run_scenario(engine, world, settings, seed_home, seed, scenario)
        evaluation.results.append(result)
        shutil.rmtree(seed_home, ignore_errors=True)
        opens, purchases = result.check(SEND_TIME, "opens"), result.check(HOLDOUT, "purchases")
        say(
            f"seed {seed}: send time on opens {_short(opens)}, holdout on purchases {_short(purchases)} "
            f"({result.decisions:,} decisions, {result.seconds:.0f} s)"
        )
    return evaluation


def _short(check: Check) -> str:
    c = check.comparison
    if not c.measurable or c.lift is None:
        return f"not measurable ({c.why})"
    return f"{c.lift:+.1%} [{c.low:+.1%}, {c.high:+.1%}] vs true {check.truth:+.1%}"
