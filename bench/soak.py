"""Benchmark 6: a soak. The real `bentoml serve` held at half its single-recipient throughput for minutes.

1. Throughput: single-recipient `/v1/decide` calls from 8 clients, closed loop, for `soak_probe_seconds` (wrk):
   requests a second.
2. Warm-up: half that rate, for `soak_warmup_seconds`, on a fixed schedule (`bench/wrk_paced.lua`).
3. Soak: the same rate for `soak_seconds` (10 minutes; `--quick` 1; `--soak-seconds`). Errors (socket errors,
   non-200 answers, answers without a decision) must be none; the resident memory of the service's process tree
   (sampled every second) must grow by less than a tenth from the start of the soak to its end, each end the
   median of its first or last `EDGE_SECONDS` of samples.

A leak shows as growth that a longer soak makes larger; the decision log the calls append to stays on disk (its
SQLite index and files), and what it adds there is in the notes.
"""

from __future__ import annotations

import statistics
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.load import DECIDE
from bench.over_http import JUDGED_CONCURRENCY, SINGLE_POOL, cpu_note, write_bodies
from bench.plan import Plan
from bench.procs import Sample, TreeSampler
from bench.report import Row, Target, seconds
from bench.server import Server, serve
from bench.world import BenchHome, clear_decision_log
from bench.wrk import WrkRun, run_wrk

SECTION = "6 soak"
SAMPLE_EVERY_S = 1.0
EDGE_SECONDS = 10.0
"""The memory at each end of the soak is the median of this many seconds of samples (one sample jumps)."""
TARGET_ERRORS = Target("at most", 0, "0")
TARGET_GROWTH = Target("at most", 0.10, "< 10%")


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _paced(server: Server, bodies: Path, rate: float, duration: float, console: Console, what: str) -> WrkRun:
    """wrk at `rate` requests a second for `duration` seconds, with a progress bar (wrk prints nothing till done)."""
    found: list[WrkRun | BaseException] = []

    def drive() -> None:
        try:
            found.append(run_wrk(server.url, server.token, bodies, DECIDE, JUDGED_CONCURRENCY, duration, rate))
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            found.append(error)

    worker = threading.Thread(target=drive, name="wrk", daemon=True)
    columns = (TextColumn(what), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(what, total=duration)
        began = time.monotonic()
        worker.start()
        while worker.is_alive():
            worker.join(1.0)
            bar.update(task, completed=min(duration, time.monotonic() - began))
    result = found[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _edge_rss(samples: list[Sample], first: bool) -> float:
    """The median resident memory of the first (or last) `EDGE_SECONDS` of `samples`."""
    if not samples:
        return float("nan")
    edge = samples[0].at + EDGE_SECONDS if first else samples[-1].at - EDGE_SECONDS
    inside = [s.rss for s in samples if (s.at <= edge if first else s.at >= edge)]
    return float(statistics.median(inside))


def _directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _soak(server: Server, home: BenchHome, plan: Plan, console: Console, work_dir: Path) -> list[Row]:
    rng = np.random.default_rng(plan.seed + 6)
    pool = np.array(home.recipients)
    singles = [[str(c)] for c in rng.choice(pool, min(SINGLE_POOL, len(pool)), replace=False)]
    bodies = write_bodies(work_dir / "single-bodies.jsonl", singles, home)
    with TreeSampler(server.pid, every=SAMPLE_EVERY_S) as sampler:
        with console.status(
            f"throughput: single recipients, {JUDGED_CONCURRENCY} at once, {plan.soak_probe_seconds:.0f} s"
        ):
            run_wrk(server.url, server.token, bodies, DECIDE, JUDGED_CONCURRENCY, 2.0)  # warm-up
            probe = run_wrk(server.url, server.token, bodies, DECIDE, JUDGED_CONCURRENCY, plan.soak_probe_seconds)
        throughput = probe.requests / probe.wall_s
        rate = throughput / 2
        warm = _paced(server, bodies, rate, plan.soak_warmup_seconds, console, f"warm-up at {rate:,.0f}/s")
        logged_before = _directory_bytes(home.settings.decisions_dir)
        soak = _paced(server, bodies, rate, plan.soak_seconds, console, f"soak at {rate:,.0f}/s")
        logged = _directory_bytes(home.settings.decisions_dir) - logged_before
    during = sampler.between(*soak.window)
    start_rss, end_rss = _edge_rss(during, first=True), _edge_rss(during, first=False)
    growth = end_rss / start_rss - 1
    peak = max((s.rss for s in during), default=0)
    minutes = soak.wall_s / 60
    held = soak.requests / soak.wall_s
    errors = soak.errors + warm.errors
    example = f"; e.g. {soak.error_example or warm.error_example}" if errors else ""
    return [
        Row(
            SECTION,
            f"throughput, single recipients, concurrency {JUDGED_CONCURRENCY}",
            throughput,
            f"{throughput:,.0f}/s",
            note=f"wrk, closed loop, {probe.requests:,} calls in {probe.wall_s:.0f} s; {cpu_note(probe, sampler)}",
        ),
        Row(
            SECTION,
            f"soak at half of it, {minutes:.1f} min: rate held",
            held,
            f"{held:,.0f}/s",
            note=f"asked {rate:,.0f}/s on a fixed schedule over {JUDGED_CONCURRENCY} connections after "
            f"{plan.soak_warmup_seconds:.0f} s of warm-up; {soak.requests:,} calls; {cpu_note(soak, sampler)}",
        ),
        Row(
            SECTION,
            "soak: p50 / p99",
            soak.p99_s,
            f"{seconds(soak.p50_s)} / {seconds(soak.p99_s)}",
            note="latency from sending to the whole answer, wrk's",
        ),
        Row(SECTION, "soak: errors", errors, f"{errors:,}", TARGET_ERRORS, f"warm-up and soak{example}"),
        Row(
            SECTION,
            "soak: memory growth of the service",
            growth,
            f"{growth:+.1%}",
            TARGET_GROWTH,
            f"resident set of the process tree, median of the first / last {EDGE_SECONDS:.0f} s: {gb(start_rss)} "
            f"-> {gb(end_rss)} (peak {gb(peak)}); the decision log grew by {logged / 1e6:,.0f} MB on disk",
        ),
    ]


def run(home: BenchHome, plan: Plan, console: Console) -> list[Row]:
    work_dir = plan.cache / "runs" / f"soak-{plan.world_name}"
    work_dir.mkdir(parents=True, exist_ok=True)
    clear_decision_log(home.settings)
    try:
        with ExitStack() as stack:
            began = time.perf_counter()
            with console.status(f"starting bentoml serve on {home.settings.home.name}"):
                server = stack.enter_context(serve(home.settings, work_dir / "serve.log"))
            console.print(
                f"[dim]bentoml serve answered after {time.perf_counter() - began:.0f} s (log {server.log})[/]"
            )
            return _soak(server, home, plan, console, work_dir)
    finally:
        clear_decision_log(home.settings)
