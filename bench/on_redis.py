"""Benchmark 7: the service reading its online features from Redis (`SENDWISE_ONLINE_STORE=redis`), beside the same
service reading them from its in-memory snapshot, measured in the same run.

A `redis-server` of the benchmark's own (Debian's, on a free loopback port, nothing saved) gets the home's
features as the pipeline puts them there (Feast's `materialize` into db 1 of its URL, then every customer's
offer scores kept beside their features, for the benchmark's window: `Engine.keep_offer_scores`); then customer
`syn-0000001` and the rest, up to `online_customers` (1,000,000), are copies of the real customers' Redis
hashes under their own keys (Redis's `COPY`, keys made as Feast makes them: `serving.redis_features.entity_keys`),
as benchmark 4 grows the feature tables.

The Redis replica serves a copy of the home without the customer views' feature tables and without Feast's
SQLite online store: what a replica needs (the registry, the MLflow store, the raw store's offers and send
history, the small tables of rhythm priors and offer values). It is measured as benchmark 3 measures the
in-memory service (a 10,000-recipient batch, the median of `http_batch_calls`; single recipients at
concurrency 1 and 8), over the real customers, and then, as benchmark 4 measures memory, with two
10,000-recipient decides over customers drawn from all `online_customers` in Redis: the peak resident set of
its process tree, which no snapshot grows with the customers.
"""

from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.load import Spec
from bench.memory import IDLE_S, synthetic_id
from bench.over_http import BATCH, _measure, run_load, write_bodies
from bench.plan import ISSUE_ONLINE_CUSTOMERS, Plan
from bench.procs import TreeSampler, tree_high_water_mark, tree_rss_by_process
from bench.redis_server import redis_server
from bench.report import Row, Target, gigabytes
from bench.server import serve
from bench.world import BenchHome, clear_decision_log
from features.store import materialize, open_store
from sendwise.asof import resolve_as_of
from sendwise.settings import Settings
from serving.engine import Engine
from serving.redis_features import entity_keys
from serving.snapshot import view_sources

SECTION = "7 on Redis"
TARGET_RSS = Target("at most", 500e6, "≤ 500 MB")
DB = 1
COPY_CHUNK = 20_000
START_S = 20.0


def replica_home(home: BenchHome, plan: Plan, url: str) -> Settings:
    """A copy of the home as a replica on Redis has it: no customer feature tables, no SQLite online store."""
    target = plan.cache / f"home-{plan.world_name}-redis-replica"
    shutil.rmtree(target, ignore_errors=True)
    sources = {s.path.name for s in view_sources(open_store(home.settings), home.settings)}
    skipped = shutil.ignore_patterns("decisions", "bentoml", "*.log", "online.db", *sources)
    shutil.copytree(home.settings.home, target, ignore=skipped)
    return Settings(home=target, online_store="redis", redis_url=url)


def fill_redis(
    settings: Settings, real: list[str], total: int, console: Console, decide_at: datetime | None = None
) -> tuple[list[str], float]:
    """Materialize the home into Redis and keep its customers' offer scores there for decisions at `decide_at`
    (as the pipeline does, for the next whole hour: `Engine.keep_offer_scores`), then copy its customers'
    hashes under synthetic ids up to `total`; (every customer id in Redis, seconds Feast's materialize took)."""
    store = open_store(settings)
    began = time.perf_counter()
    with console.status("Feast materialize into Redis"):
        materialize(store, resolve_as_of(settings).time.to_pydatetime())
    materialized = time.perf_counter() - began
    with console.status("offer scores kept in Redis"):
        Engine.load(settings, log_decisions=False).keep_offer_scores(real, at=decide_at)
    client = redis.Redis.from_url(settings.redis_url)
    project, version = store.config.project, store.config.entity_key_serialization_version
    real_keys = entity_keys(real, project, version)
    added = max(total - len(real), 0)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("synthetic customers copied in Redis", total=added)
        for first in range(0, added, COPY_CHUNK):
            ks = range(first, min(first + COPY_CHUNK, added))
            keys = entity_keys([synthetic_id(k + 1) for k in ks], project, version)
            with client.pipeline(transaction=False) as pipe:
                for k, key in zip(ks, keys, strict=True):
                    pipe.execute_command("COPY", real_keys[k % len(real_keys)], key, "REPLACE")
                pipe.execute()
            bar.advance(task, len(keys))
    return real + [synthetic_id(k + 1) for k in range(added)], materialized


def _ratio_rows(memory_rows: list[Row], redis_rows: list[Row]) -> list[Row]:
    """Each Redis figure beside the in-memory one of the same benchmark, as a ratio."""
    in_memory = {row.benchmark: row for row in memory_rows}
    out = []
    for row in redis_rows:
        twin = in_memory.get(row.benchmark)
        if row.value is None or twin is None or twin.value is None or "errors" in row.benchmark:
            continue
        ratio = row.value / twin.value if twin.value else float("nan")
        out.append(Row(SECTION, f"Redis / in memory: {row.benchmark}", ratio, f"{ratio:.2f}×", note=twin.shown))
    return out


def _labelled(rows: list[Row], where: str, judged: bool) -> list[Row]:
    return [
        Row(SECTION, f"{where}: {r.benchmark}", r.value, r.shown, r.target if judged else None, r.note, r.judged)
        for r in rows
    ]


def _memory(settings: Settings, everyone: list[str], home: BenchHome, plan: Plan, console: Console) -> list[Row]:
    work_dir = plan.cache / "runs" / f"redis-memory-{plan.world_name}"
    rng = np.random.default_rng(plan.seed + 3)
    batches = [rng.choice(everyone, BATCH, replace=False).tolist() for _ in range(2)]
    bodies = write_bodies(work_dir / "bodies.jsonl", batches, home)
    environment = {"SENDWISE_ONLINE_STORE": "redis", "SENDWISE_REDIS_URL": settings.redis_url}
    with ExitStack() as stack:
        with console.status(f"starting bentoml serve on Redis with {len(everyone):,} customers there"):
            server = stack.enter_context(serve(settings, work_dir / "serve.log", environment))
            sampler = stack.enter_context(TreeSampler(server.pid))
            time.sleep(IDLE_S)
        idle = sampler.samples[-1].rss
        spec = Spec(url=server.url, token=server.token, bodies=str(bodies), concurrency=1, requests=2)
        outcome = run_load(spec, work_dir, console, f"2 batches of {BATCH:,} with {len(everyone):,} in Redis")
        peak = sampler.peak_rss()
        processes = "; ".join(f"{command} {gigabytes(rss)}" for command, rss in tree_rss_by_process(server.pid))
        high_water = tree_high_water_mark(server.pid)
    judged = len(everyone) >= ISSUE_ONLINE_CUSTOMERS
    errors = f"; {outcome.errors} errors: {outcome.error_examples[:1]}" if outcome.errors else ""
    times = ", ".join(f"{t:.2f} s" for t in outcome.latencies_s)
    return [
        Row(
            SECTION,
            f"service RSS on Redis, {len(everyone):,} customers in Redis",
            peak if not outcome.errors else None,
            gigabytes(peak),
            TARGET_RSS,
            f"peak through 2 decide calls of {BATCH:,} ({times}) over all of them{errors}; idle after start "
            f"{gigabytes(idle)}; at the end: {processes}"
            + ("" if high_water is None else f"; peaks since start (VmHWM) {gigabytes(high_water)}")
            + ("" if judged else f"; not judged: the target is at {ISSUE_ONLINE_CUSTOMERS:,} customers"),
            judged=judged,
        )
    ]


def run(home: BenchHome, plan: Plan, console: Console) -> list[Row]:
    work_dir = plan.cache / "runs" / f"redis-{plan.world_name}"
    work_dir.mkdir(parents=True, exist_ok=True)
    with redis_server() as url:
        settings = replica_home(home, plan, f"{url}/{DB}")
        settings.activate()
        tables = home.settings.feature_tables_dir
        real = pd.read_parquet(tables / "customer_features.parquet", columns=["customer_id"])["customer_id"]
        everyone, materialized = fill_redis(
            settings, real.astype(str).unique().tolist(), plan.online_customers, console, home.window_start
        )
        stats: Any = redis.Redis.from_url(url).info("memory")
        used = int(stats["used_memory"])
        rows = [
            Row(
                SECTION,
                f"Redis: {len(everyone):,} customers",
                used,
                gigabytes(used),
                note=f"used_memory of redis-server; Feast materialize of the home took {materialized:.0f} s",
            )
        ]
        clear_decision_log(home.settings)
        with serve(home.settings, work_dir / "serve-memory.log") as server:
            in_memory = _measure(server, home, plan, console, work_dir)
        clear_decision_log(home.settings)
        environment = {"SENDWISE_ONLINE_STORE": "redis", "SENDWISE_REDIS_URL": settings.redis_url}
        with serve(settings, work_dir / "serve-redis.log", environment) as server:
            on_redis = _measure(server, home, plan, console, work_dir)
        clear_decision_log(settings)
        rows += _labelled(in_memory, "in memory", judged=False) + _labelled(on_redis, "on Redis", judged=True)
        rows += _ratio_rows(in_memory, on_redis)
        rows += _memory(settings, everyone, home, plan, console)
        clear_decision_log(settings)
    return rows
