"""Benchmark 4: the service's resident memory with `online_customers` (1,000,000) customers in the online store.

The home is a copy of the benchmark home whose customer feature tables (the Parquet sources of the Feast views
the engine serves from) are grown to `online_customers` customers: customer `syn-0000001` gets the latest
materialized row of a real customer (the real ones in turn) under its own id. The engine reads them into its
in-memory snapshot of the online features (serving/snapshot.py), exactly as it reads a real home's; Feast's
SQLite online store keeps only the real customers (writing a million there converts every value to protobuf
in Python, about 17 minutes, and the engine no longer reads customers from it). Reading a few synthetic
customers back through the snapshot checks they equal the customers they copy. The raw store (and so the send
history the engine loads) stays the world's.

Measured: the resident set of `bentoml serve`'s process tree (supervisor and workers, summed, so shared pages
count once per process and the figure errs high), sampled every 50 ms: once started and idle, and at its peak
through two 10,000-recipient `/v1/decide` calls over customers drawn from all of the online store (the judged
figure). The notes add each process's own peak since it started (`VmHWM`), which includes loading the home.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.load import Spec
from bench.over_http import BATCH, run_load, write_bodies
from bench.plan import ISSUE_ONLINE_CUSTOMERS, Plan
from bench.procs import TreeSampler, tree_high_water_mark, tree_rss_by_process
from bench.report import Row, Target, gigabytes
from bench.server import serve
from bench.world import BenchHome, clear_decision_log
from features.store import open_store
from sendwise.settings import Settings
from serving.snapshot import FeatureSnapshot, latest_rows, view_sources

SECTION = "4 memory"
TARGET = Target("at most", 1.5e9, "≤ 1.50 GB")
MARKER = "bench-online.json"
LAYOUT = "feature-tables"  # how the copy was grown: a copy grown another way is built again
SYNTHETIC_PREFIX = "syn-"
CLONE_CHUNK = 50_000
IDLE_S = 5.0
CHECKED = 5


def synthetic_id(k: int) -> str:
    return f"{SYNTHETIC_PREFIX}{k:07d}"


def fill_feature_tables(settings: Settings, total: int, console: Console) -> int:
    """Grow the customer views' feature tables to `total` customers: synthetic customer k gets the latest row
    (as materialized) of the k-th real one, in turn, under its own id; how many were added."""
    store = open_store(settings)
    sources = view_sources(store, settings)
    real = {s.view: latest_rows(s, with_timestamp=True) for s in sources}
    customers = real["customer_fv"].num_rows
    added = total - customers
    if added <= 0:
        return 0
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task(f"synthetic customers into {len(sources)} feature tables", total=added * len(sources))
        for source in sources:
            latest = real[source.view]
            original = pq.read_table(source.path)
            grown = source.path.with_suffix(".growing")
            with pq.ParquetWriter(grown, original.schema) as writer:
                writer.write_table(original)
                for start in range(0, added, CLONE_CHUNK):
                    ks = np.arange(start, min(start + CLONE_CHUNK, added))
                    chunk = latest.take(pa.array(ks % latest.num_rows))
                    ids = pa.array([synthetic_id(int(k) + 1) for k in ks], type=pa.string())
                    chunk = chunk.set_column(chunk.schema.get_field_index("customer_id"), "customer_id", ids)
                    missing = [f.name for f in original.schema if f.name not in chunk.column_names]
                    for name in missing:
                        chunk = chunk.append_column(name, pa.nulls(len(ks), original.schema.field(name).type))
                    writer.write_table(chunk.select(original.schema.names).cast(original.schema))
                    bar.advance(task, len(ks))
            del original
            grown.replace(source.path)
    return added


def check_synthetic(settings: Settings, added: int) -> None:
    """A few synthetic customers, as the engine's snapshot reads them, equal the real customers they copy."""
    snapshot = FeatureSnapshot.load(open_store(settings), settings)
    real = len(snapshot) - added
    for k in np.linspace(0, added - 1, CHECKED).astype(int):
        copy, source = snapshot.rows([synthetic_id(int(k) + 1), str(snapshot.index[int(k) % real])])
        if copy == snapshot.empty_row or not snapshot.known[copy]:
            raise RuntimeError(f"synthetic customer {synthetic_id(int(k) + 1)} is not in the snapshot")
        same = np.array_equal(snapshot.scalars[copy], snapshot.scalars[source], equal_nan=True) and np.array_equal(
            snapshot.rhythm[copy], snapshot.rhythm[source]
        )
        if not same:
            raise RuntimeError(f"the features of {synthetic_id(int(k) + 1)} differ from the customer it copies")


def prepare_online_home(home: BenchHome, plan: Plan, console: Console) -> tuple[Settings, list[str]]:
    """The cached copy of the home with `plan.online_customers` customers online; (settings, every customer id)."""
    target = plan.cache / f"home-{plan.world_name}-online-{plan.online_customers}"
    real_ids = (
        pd.read_parquet(home.settings.feature_tables_dir / "customer_features.parquet", columns=["customer_id"])[
            "customer_id"
        ]
        .astype(str)
        .drop_duplicates()
        .tolist()
    )
    added = max(plan.online_customers - len(real_ids), 0)
    everyone = real_ids + [synthetic_id(k + 1) for k in range(added)]
    marker_path = target / MARKER
    marker = json.loads(marker_path.read_text()) if marker_path.exists() else {}
    if not plan.rebuild and marker.get("source_built_at") == home.built_at and marker.get("layout") == LAYOUT:
        return Settings(home=target), everyone
    console.rule(f"[bold]growing a copy of the home to {plan.online_customers:,} customers online")
    began = time.perf_counter()
    shutil.rmtree(target, ignore_errors=True)
    with console.status(f"copying {home.settings.home} to {target}"):
        shutil.copytree(home.settings.home, target, ignore=shutil.ignore_patterns("decisions", "bentoml", "*.log"))
    settings = Settings(home=target)
    settings.activate()
    fill_feature_tables(settings, plan.online_customers, console)
    if added:
        check_synthetic(settings, added)
    marker_path.write_text(
        json.dumps({"source_built_at": home.built_at, "customers": plan.online_customers, "layout": LAYOUT})
    )
    console.print(f"[dim]feature tables grown in {time.perf_counter() - began:.0f} s[/]")
    return settings, everyone


def _size(path: Path) -> str:
    return gigabytes(path.stat().st_size) if path.exists() else "?"


def run(home: BenchHome, plan: Plan, console: Console) -> list[Row]:
    settings, everyone = prepare_online_home(home, plan, console)
    work_dir = plan.cache / "runs" / f"memory-{plan.world_name}-{plan.online_customers}"
    work_dir.mkdir(parents=True, exist_ok=True)
    clear_decision_log(settings)
    rng = np.random.default_rng(plan.seed + 3)
    batches = [rng.choice(everyone, BATCH, replace=False).tolist() for _ in range(2)]
    bodies = write_bodies(work_dir / "bodies.jsonl", batches, home)
    with ExitStack() as stack:
        with console.status(f"starting bentoml serve with {plan.online_customers:,} customers online"):
            server = stack.enter_context(serve(settings, work_dir / "serve.log"))
            sampler = stack.enter_context(TreeSampler(server.pid))
            time.sleep(IDLE_S)
        idle = sampler.samples[-1].rss
        spec = Spec(url=server.url, token=server.token, bodies=str(bodies), concurrency=1, requests=2)
        outcome = run_load(spec, work_dir, console, f"2 batches of {BATCH:,} with {plan.online_customers:,} online")
        peak = sampler.peak_rss()
        processes = "; ".join(f"{command} {gigabytes(rss)}" for command, rss in tree_rss_by_process(server.pid))
        high_water = tree_high_water_mark(server.pid)
    clear_decision_log(settings)
    judged = plan.online_customers >= ISSUE_ONLINE_CUSTOMERS
    errors = f"; {outcome.errors} errors: {outcome.error_examples[:1]}" if outcome.errors else ""
    return [
        Row(
            SECTION,
            f"service RSS, {plan.online_customers:,} customers online",
            peak if not outcome.errors else None,
            gigabytes(peak),
            TARGET,
            f"peak through 2 decide calls of {BATCH:,}{errors}; engagement table "
            f"{_size(settings.feature_tables_dir / 'engagement_features.parquet')}; "
            f"send history from the raw store of the {plan.customers:,}-customer world"
            + ("" if judged else f"; not judged: the target is at {ISSUE_ONLINE_CUSTOMERS:,} customers"),
            judged=judged,
        ),
        Row(
            SECTION,
            "service RSS, idle after start",
            idle,
            gigabytes(idle),
            note=f"at the end: {processes}"
            + (
                "" if high_water is None else f"; peaks since start, start-up included (VmHWM): {gigabytes(high_water)}"
            ),
        ),
    ]
