"""Benchmark 3: the real `bentoml serve` on loopback, driven by the load generator of `bench.load`.

- A 10,000-recipient `/v1/decide` batch, one call at a time, `http_batch_calls` times after one untimed call,
  each call with recipients drawn afresh: the median and the worst call. Time is the client's, from sending the
  request to having read the whole answer (JSON encoding both ways included).
- Single-recipient calls from 1 and from 8 clients at once (closed loop, a different customer each call) for
  `single_seconds` after a 2-second warm-up: p50, p99 and errors, measured by wrk (`bench.wrk`): the httpx
  generator spent a core of the two on a few hundred requests a second.

The load generators run in their own processes and share the two cores with the service: their own CPU use and
the service's (sampled over the service's process tree in the same window) are shown beside each figure.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bench.inprocess import decide_request
from bench.load import DECIDE, Outcome, Spec
from bench.plan import Plan
from bench.procs import TreeSampler
from bench.report import Row, Target, seconds
from bench.server import Server, serve
from bench.world import REPO_ROOT, BenchHome, bench_environment, clear_decision_log
from bench.wrk import WrkRun, run_wrk

SECTION = "3 over HTTP"
BATCH = 10_000
SINGLE_POOL = 5_000
SINGLE_WARMUP_S = 2.0
TARGET_BATCH = Target("at most", 1.0, "≤ 1 s")
TARGET_P99 = Target("at most", 0.010, "≤ 10 ms")
TARGET_ERRORS = Target("at most", 0, "0")
JUDGED_CONCURRENCY = 8


def write_bodies(path: Path, batches: list[list[str]], home: BenchHome) -> Path:
    """One `/v1/decide` body per line, each a request for one list of customer ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for ids in batches:
            handle.write(decide_request(ids, home.window_start).model_dump_json(exclude_none=True) + "\n")
    return path


def run_load(spec: Spec, work_dir: Path, console: Console, description: str) -> Outcome:
    """`python -m bench.load` with `spec`, a spinner while it runs; its JSON result."""
    spec_path = work_dir / "load-spec.json"
    spec_path.write_text(json.dumps(asdict(spec)))
    command = [sys.executable, "-m", "bench.load", str(spec_path)]
    columns = (SpinnerColumn(), TextColumn(description), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        bar.add_task(description, total=None)
        result = subprocess.run(command, cwd=REPO_ROOT, env=bench_environment(), capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the load generator failed ({result.returncode}): {result.stderr.decode()[-2000:]}")
    loaded = json.loads(result.stdout)
    loaded["window"] = tuple(loaded["window"])
    return Outcome(**loaded)


def cpu_note(outcome: Outcome | WrkRun, sampler: TreeSampler) -> str:
    """The load generator's CPU and the service's, in cores busy, over the measured window."""
    service = sampler.cpu_share(*outcome.window)
    own = outcome.cpu_s / outcome.wall_s if outcome.wall_s else float("nan")
    return f"CPU: load generator {own:.2f} cores, service {service:.2f} cores"


def _errors_note(outcome: Outcome) -> str:
    return f"; e.g. {outcome.error_examples[0]}" if outcome.error_examples else ""


def batch_rows(outcome: Outcome, sampler: TreeSampler, calls: int) -> list[Row]:
    times = outcome.latencies_s
    if not times:
        return [Row(SECTION, f"batch of {BATCH:,}", None, "—", note=f"no answer{_errors_note(outcome)}")]
    median, worst = statistics.median(times), max(times)
    errors = f"{outcome.errors} errors{_errors_note(outcome)}"
    return [
        Row(
            SECTION,
            f"batch of {BATCH:,}: median of {len(times)}",
            median if not outcome.errors else None,
            seconds(median),
            TARGET_BATCH,
            f"{calls} calls after 1 untimed; {errors}; {cpu_note(outcome, sampler)}",
        ),
        Row(SECTION, f"batch of {BATCH:,}: worst of {len(times)}", worst, seconds(worst)),
    ]


def single_rows(run: WrkRun, sampler: TreeSampler, concurrency: int) -> list[Row]:
    label = f"single, concurrency {concurrency}"
    example = f"e.g. {run.error_example}" if run.error_example else ""
    if not run.requests:
        return [Row(SECTION, label, None, "—", note=f"no answer; {example}")]
    judged = concurrency == JUDGED_CONCURRENCY
    throughput = run.requests / run.wall_s
    return [
        Row(
            SECTION,
            f"{label}: p50",
            run.p50_s,
            seconds(run.p50_s),
            note=f"wrk: {run.requests:,} calls in {run.wall_s:.0f} s ({throughput:,.0f}/s); {cpu_note(run, sampler)}",
        ),
        Row(SECTION, f"{label}: p99", run.p99_s, seconds(run.p99_s), TARGET_P99 if judged else None),
        Row(
            SECTION,
            f"{label}: errors",
            run.errors,
            f"{run.errors:,}",
            TARGET_ERRORS if judged else None,
            example,
        ),
    ]


def _measure(server: Server, home: BenchHome, plan: Plan, console: Console, work_dir: Path) -> list[Row]:
    rng = np.random.default_rng(plan.seed + 2)
    pool = np.array(home.recipients)
    out: list[Row] = []
    with TreeSampler(server.pid) as sampler:
        batches = [rng.choice(pool, BATCH, replace=False).tolist() for _ in range(plan.http_batch_calls + 1)]
        spec = Spec(
            url=server.url,
            token=server.token,
            bodies=str(write_bodies(work_dir / "batch-bodies.jsonl", batches, home)),
            concurrency=1,
            requests=plan.http_batch_calls,
            warmup_requests=1,
        )
        outcome = run_load(spec, work_dir, console, f"{plan.http_batch_calls + 1} batches of {BATCH:,} over HTTP")
        out += batch_rows(outcome, sampler, plan.http_batch_calls)
        singles = [[str(c)] for c in rng.choice(pool, min(SINGLE_POOL, len(pool)), replace=False)]
        bodies = write_bodies(work_dir / "single-bodies.jsonl", singles, home)
        for concurrency in plan.concurrencies:
            what = f"single recipients, {concurrency} at once, {plan.single_seconds:.0f} s"
            with console.status(f"{what} (wrk)"):
                run_wrk(server.url, server.token, bodies, DECIDE, concurrency, SINGLE_WARMUP_S)  # warm-up
                run = run_wrk(server.url, server.token, bodies, DECIDE, concurrency, plan.single_seconds)
            out += single_rows(run, sampler, concurrency)
    return out


def run(home: BenchHome, plan: Plan, console: Console) -> list[Row]:
    work_dir = plan.cache / "runs" / f"http-{plan.world_name}"
    work_dir.mkdir(parents=True, exist_ok=True)
    clear_decision_log(home.settings)
    with ExitStack() as stack:
        began = time.perf_counter()
        with console.status(f"starting bentoml serve on {home.settings.home.name}"):
            server = stack.enter_context(serve(home.settings, work_dir / "serve.log"))
        console.print(f"[dim]bentoml serve answered after {time.perf_counter() - began:.0f} s (log {server.log})[/]")
        rows = _measure(server, home, plan, console, work_dir)
    clear_decision_log(home.settings)
    return rows
