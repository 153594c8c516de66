"""Benchmark 5: explanations in process, per recipient.

- `Engine.explain` (what `/v1/explain` runs, without HTTP) for one recipient at a time, for each model:
  `open_propensity` at the best hour of the next 24 (found as `/v1/decide` finds it), `send_time` at an hour of
  the benchmark's window, `next_best_offer` for an eligible offer; recipients, hours and offers drawn at random
  for every call, the request built before the clock starts. Everything the call does is timed: the online
  features, the design row, LightGBM's TreeSHAP and the sentences. The median call is held to 5 ms; the p99 is
  in the note.
- `Engine.decide_json` on batches of 1,000 recipients with `explain: true` (each sent decision's top three
  drivers) and, on the same recipients in the same run, without it: the time per recipient with it is held to
  the same 5 ms, and the ratio of the two is what explaining adds to deciding.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from rich.console import Console
from rich.progress import Progress

from bench.inprocess import TOPIC, decide_request, progress
from bench.plan import Plan
from bench.report import Row, Target, seconds
from bench.world import BenchHome, clear_decision_log
from serving.schemas import MAX_EXPLAINED_RECIPIENTS, Campaign, ExplainRequest, ModelName

if TYPE_CHECKING:
    from serving.engine import Engine

SECTION = "5 explain"
TARGET = Target("at most", 0.005, "≤ 5 ms")
WARM_UP = 20
MODELS: tuple[ModelName, ...] = ("open_propensity", "send_time", "next_best_offer")
T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed call."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p99(self) -> float:
        return float(np.percentile(self.seconds, 99))


def _timed(call: Callable[[T], object], arguments: Sequence[T], after: Callable[[], None]) -> Timing:
    """`call` on each of `arguments`, each call timed on its own; `after` runs after each, untimed."""
    spent = []
    for argument in arguments:
        began = time.perf_counter()
        call(argument)
        spent.append(time.perf_counter() - began)
        after()
    return Timing(spent)


def run(home: BenchHome, plan: Plan, console: Console) -> list[Row]:
    from serving.engine import Engine

    settings = home.settings
    settings.activate()
    clear_decision_log(settings)
    with console.status("loading the engine (champions, Feast, send history)"):
        engine = Engine.load(settings)
    rng = np.random.default_rng(plan.seed + 5)
    pool = np.array(home.recipients)
    campaign = Campaign(kind="promotional", topic=TOPIC)
    eligible = engine.catalog.eligible(home.window_start, None)
    offers = eligible.ids if eligible is not None else []
    if not offers:
        raise RuntimeError(f"no offer is eligible at {home.window_start}: next_best_offer has nothing to explain")

    def request(model: ModelName) -> ExplainRequest:
        customer = str(rng.choice(pool))
        if model == "send_time":
            at = home.window_start + timedelta(hours=int(rng.integers(24)))
            return ExplainRequest(customer_id=customer, model=model, campaign=campaign, send_at=at)
        if model == "next_best_offer":
            offer = str(rng.choice(offers))
            return ExplainRequest(customer_id=customer, model=model, offer_id=offer, send_at=home.window_start)
        return ExplainRequest(customer_id=customer, model=model, campaign=campaign)

    rows = []
    with progress(console) as bar:
        for model in MODELS:
            task = bar.add_task(f"explain {model}, one recipient a call", total=plan.explain_calls)
            for warm in [request(model) for _ in range(WARM_UP)]:
                engine.explain(warm)
            requests = [request(model) for _ in range(plan.explain_calls)]
            timing = _timed(engine.explain, requests, lambda task=task: bar.advance(task))  # type: ignore[misc]
            booster = engine.models[model].booster
            rows.append(
                Row(
                    SECTION,
                    f"explain {model}, per recipient",
                    timing.median,
                    seconds(timing.median),
                    TARGET,
                    f"median of {len(timing.seconds)} Engine.explain calls (top 5 drivers, {booster.num_trees()} "
                    f"trees); p99 {seconds(timing.p99)}",
                )
            )
        rows.extend(_decide_with_explain(engine, home, plan, rng, pool, bar))
    clear_decision_log(settings)
    return rows


def _decide_with_explain(
    engine: Engine, home: BenchHome, plan: Plan, rng: np.random.Generator, pool: np.ndarray, bar: Progress
) -> list[Row]:
    """Batches of 1,000 decided with and without `explain`, alternately, each pair on the same recipients."""
    size = MAX_EXPLAINED_RECIPIENTS
    plain, explained = [], []
    engine.decide_json(decide_request(rng.choice(pool, size=size, replace=False).tolist(), home.window_start))
    task = bar.add_task(f"decide, batches of {size:,} with and without explain", total=plan.explain_batches)
    for _ in range(plan.explain_batches):
        request = decide_request(rng.choice(pool, size=size, replace=False).tolist(), home.window_start)
        pair = [request, request.model_copy(update={"explain": True})]
        timing = _timed(engine.decide_json, pair, lambda: None)
        plain.append(timing.seconds[0])
        explained.append(timing.seconds[1])
        bar.advance(task)
    with_s, without_s = statistics.median(explained), statistics.median(plain)
    per_recipient = with_s / size
    ratio = with_s / without_s
    return [
        Row(
            SECTION,
            f"decide with explain, batch of {size:,}, per recipient",
            per_recipient,
            seconds(per_recipient),
            TARGET,
            f"median of {len(explained)} Engine.decide_json calls with explain: {seconds(with_s)} a batch (top 3 "
            f"drivers of each decision to send)",
        ),
        Row(
            SECTION,
            "decide with explain / without, same recipients",
            ratio,
            f"{ratio:,.1f}×",
            note=f"{seconds(with_s)} vs {seconds(without_s)} a batch of {size:,}, medians of {len(plain)} alternated "
            "calls in this run",
        ),
    ]
