"""Benchmark 4: the service's resident memory with `online_customers` (1,000,000) customers in the online store.

The home is a copy of the benchmark home whose Feast SQLite online store is grown to `online_customers`
customers with synthetic rows: customer `syn-0000001` gets every online feature row of a real customer (the
real ones in turn), under its own entity key serialized by Feast itself. The rows are copied inside SQLite:
writing a million customers through `FeatureStore.write_to_online_store` converts every value to protobuf in
Python and takes about 17 minutes on two cores (measured: 1 s per 1,000 customers), longer than the whole
benchmark may take. Reading a few synthetic customers back through Feast checks that they are what Feast
would serve. The raw store (and so the send history the engine loads) stays the world's.

Measured: the resident set of `bentoml serve`'s process tree (supervisor and workers, summed, so shared pages
count once per process and the figure errs high), sampled every 50 ms: once started and idle, and at its peak
through two 10,000-recipient `/v1/decide` calls over customers drawn from all of the online store (the judged
figure). The notes add each process's own peak since it started (`VmHWM`), which includes loading the home.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureStore
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

SECTION = "4 memory"
TARGET = Target("at most", 1.5e9, "≤ 1.50 GB")
MARKER = "bench-online.json"
SYNTHETIC_PREFIX = "syn-"
CLONE_CHUNK = 50_000
IDLE_S = 5.0
CHECKED = 5


def _key(customer_id: str) -> bytes:
    """The customer's entity key as Feast serializes it in the online store."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=customer_id)])
    return serialize_entity_key(key, entity_key_serialization_version=3)


def _customer_tables(store: FeatureStore, connection: sqlite3.Connection) -> list[str]:
    """The online tables of the views keyed by customer, named as Feast's SQLite store names them."""
    present = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    wanted = [f"{store.project}_{view.name}" for view in store.list_feature_views() if "customer" in view.entities]
    missing = [name for name in wanted if name not in present]
    if missing or not wanted:
        raise RuntimeError(
            f"the online store has no table {missing or wanted} for the customer views (it has {sorted(present)}): "
            "Feast's SQLite layout is not the one this benchmark copies rows in"
        )
    return wanted


def synthetic_id(k: int) -> str:
    return f"{SYNTHETIC_PREFIX}{k:07d}"


def fill_online_store(settings: Settings, real_ids: list[str], total: int, console: Console) -> int:
    """Grow the online store to `total` customers with copies of the real ones; how many were added."""
    added = total - len(real_ids)
    if added <= 0:
        return 0
    store = open_store(settings)
    connection = sqlite3.connect(settings.feast_dir / "online.db")
    try:
        connection.execute("PRAGMA synchronous = OFF")
        tables = _customer_tables(store, connection)
        sources = [_key(c) for c in real_ids]
        connection.execute("CREATE TEMP TABLE clone (k INTEGER PRIMARY KEY, dst BLOB, src BLOB)")
        columns = "entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts"
        copied = ", ".join(f"t.{c.strip()}" for c in columns.split(",")[1:])
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task(f"synthetic customers into {len(tables)} online tables", total=added * len(tables))
            for start in range(0, added, CLONE_CHUNK):
                chunk = range(start, min(start + CLONE_CHUNK, added))
                rows = [(k, _key(synthetic_id(k + 1)), sources[k % len(sources)]) for k in chunk]
                with connection:
                    connection.execute("DELETE FROM clone")
                    connection.executemany("INSERT INTO clone VALUES (?, ?, ?)", rows)
                    for table in tables:
                        connection.execute(
                            f'INSERT OR REPLACE INTO "{table}" ({columns}) SELECT c.dst, {copied} '
                            f'FROM clone c JOIN "{table}" t ON t.entity_key = c.src ORDER BY c.k'
                        )
                        bar.advance(task, len(chunk))
    finally:
        connection.close()
    return added


def check_synthetic(settings: Settings, real_ids: list[str], added: int) -> None:
    """A few synthetic customers read back through Feast equal the real customers they were copied from."""
    store = open_store(settings)
    service = store.get_feature_service("send_time_v1")
    picks = np.linspace(0, added - 1, CHECKED).astype(int)
    pairs = [(synthetic_id(int(k) + 1), real_ids[int(k) % len(real_ids)]) for k in picks]
    entity_rows = [{"customer_id": c} for pair in pairs for c in pair]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        read = pd.DataFrame(store.get_online_features(features=service, entity_rows=entity_rows).to_dict())
    values = read.drop(columns=["customer_id"]).astype(str)
    for i, (synthetic, real) in enumerate(pairs):
        if values.iloc[2 * i].tolist() != values.iloc[2 * i + 1].tolist() or read["timezone"].iloc[2 * i] is None:
            raise RuntimeError(f"online features of {synthetic} read back through Feast differ from {real}'s")


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
    if not plan.rebuild and marker.get("source_built_at") == home.built_at:
        return Settings(home=target), everyone
    console.rule(f"[bold]growing a copy of the home to {plan.online_customers:,} customers online")
    began = time.perf_counter()
    shutil.rmtree(target, ignore_errors=True)
    with console.status(f"copying {home.settings.home} to {target}"):
        shutil.copytree(home.settings.home, target, ignore=shutil.ignore_patterns("decisions", "bentoml", "*.log"))
    settings = Settings(home=target)
    settings.activate()
    fill_online_store(settings, real_ids, plan.online_customers, console)
    if added:
        check_synthetic(settings, real_ids, added)
    marker_path.write_text(json.dumps({"source_built_at": home.built_at, "customers": plan.online_customers}))
    console.print(f"[dim]online store grown in {time.perf_counter() - began:.0f} s[/]")
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
            f"peak through 2 decide calls of {BATCH:,}{errors}; online.db {_size(settings.feast_dir / 'online.db')}; "
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
