"""Benchmark 8, scale: the whole pipeline at growing numbers of customers, stage by stage, time and memory.

For each size a world is simulated (`sendwise simulate --customers N --days D`, kept in the cache between runs)
and a fresh home is built from it by the pipeline's own steps (`bench/stages.py`): ingest, features, train,
promote, materialize into the SQLite online store, and materialize again into a Redis online store (a
`redis-server` the section starts on a free port). Each group of stages runs in a process of its own; its
stages report their wall-clock seconds and their peak resident memory, and a watchdog samples the process
tree every half second and stops it past `--scale-memory-limit` (the machine is shared). The table gives
every stage at every size and how each grows per 10× customers; the pipeline (ingest to materialize into
SQLite) is held to at most 60 minutes and 16 GB at 1,000,000 customers × 90 days.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import redis
from rich.console import Console
from rich.table import Table

from bench.plan import Plan
from bench.procs import tree
from bench.redis_server import redis_server
from bench.report import Row, Target, gigabytes
from bench.world import REPO_ROOT, bench_environment

SECTION = "8 scale"
PIPELINE_STAGES = ("ingest", "features", "train", "promote", "materialize")
"""What `sendwise pipeline` does, in order: the pipeline's time is their sum, its memory their largest peak."""
GROUPS: tuple[tuple[str, ...], ...] = (("ingest",), ("features", "train", "promote"), ("materialize",))
"""Stages that share a process: features, train and promote hand each other what they built in memory."""
REDIS_STAGE = "materialize (Redis)"
STAGES = ("simulate", *PIPELINE_STAGES, REDIS_STAGE)
TARGET_CUSTOMERS = 1_000_000
TARGET_DAYS = 90
TARGET_MINUTES = 60.0
TARGET_BYTES = 16e9
WATCH_SECONDS = 0.5
MIN_AVAILABLE = 1.5e9
"""Bytes the machine must keep available: below it the watchdog stops the stage, whatever its own limit (the
machine is shared, and the kernel's out-of-memory killer would pick any process)."""
WORLD_MARKER = "scale-world.json"


@dataclass
class Stage:
    """One stage at one size: seconds and peak resident bytes, or why it has none."""

    name: str
    customers: int
    seconds: float | None = None
    peak_rss: int | None = None
    note: str = ""


@dataclass
class SizeRun:
    """Everything measured at one size."""

    customers: int
    days: int
    stages: dict[str, Stage] = field(default_factory=dict)
    redis_used_memory: int | None = None
    redis_keys: int | None = None
    load_average: tuple[float, float] = (0.0, 0.0)
    """The 1-minute load average when the size's pipeline started and when it ended."""

    def pipeline_seconds(self) -> float | None:
        times = [self.stages[s].seconds if s in self.stages else None for s in PIPELINE_STAGES]
        return None if any(t is None for t in times) else sum(t for t in times if t is not None)

    def pipeline_peak(self) -> int | None:
        peaks = [self.stages[s].peak_rss if s in self.stages else None for s in PIPELINE_STAGES]
        return None if any(p is None for p in peaks) else max(p for p in peaks if p is not None)


@dataclass
class Watched:
    """A process that ran under the watchdog: its exit code, wall-clock seconds, peak and why it was stopped."""

    returncode: int
    seconds: float
    peak_rss: int
    """The larger of the kernel's peak for the process (`wait4`'s `ru_maxrss`) and the tree's sampled peak."""
    stopped: str = ""
    samples: list[tuple[float, int]] = field(default_factory=list)
    """(time.time(), bytes resident in the tree), every `WATCH_SECONDS`."""

    def peak_between(self, start: float, end: float) -> int:
        return max((rss for at, rss in self.samples if start - WATCH_SECONDS <= at <= end + WATCH_SECONDS), default=0)


def growth_per_tenfold(small: int, large: int, value_small: float, value_large: float) -> float:
    """How much a figure grows per 10× customers between two sizes: (ratio of values)^(1 / log10 ratio of sizes).

    1 is flat, 10 is linear in customers, 100 quadratic.
    """
    if small <= 0 or large <= small or value_small <= 0 or value_large <= 0:
        raise ValueError(f"growth needs 0 < {small} < {large} customers and positive values")
    return float((value_large / value_small) ** (1.0 / math.log10(large / small)))


def _tree_rss(pid: int) -> int:
    total = 0
    try:
        processes = tree(pid)
    except psutil.Error:
        return 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


def watched(command: list[str], env: dict[str, str], log: Path, memory_limit: float, time_limit: float) -> Watched:
    """Run `command` to its end, its output appended to `log`; stop its process group past either limit."""
    samples: list[tuple[float, int]] = []
    stopped: list[str] = []
    began = time.perf_counter()
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        done = threading.Event()

        def watch() -> None:
            while not done.wait(WATCH_SECONDS):
                rss = _tree_rss(process.pid)
                samples.append((time.time(), rss))
                why = ""
                if rss > memory_limit:
                    why = f"stopped at {gigabytes(rss)} resident, past the limit of {gigabytes(memory_limit)}"
                elif psutil.virtual_memory().available < MIN_AVAILABLE:
                    why = f"stopped at {gigabytes(rss)} resident: the machine had under {gigabytes(MIN_AVAILABLE)} left"
                elif time.perf_counter() - began > time_limit:
                    why = f"stopped after {time_limit / 60:.0f} min, the time limit"
                if why:
                    stopped.append(why)
                    with suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    return

        watcher = threading.Thread(target=watch, name="scale-watchdog", daemon=True)
        watcher.start()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        watcher.join()
    seconds = time.perf_counter() - began
    peak = max(int(usage.ru_maxrss) * 1024, max((rss for _, rss in samples), default=0))
    return Watched(process.returncode, seconds, peak, stopped[0] if stopped else "", samples)


def world_dir(plan: Plan, customers: int) -> Path:
    return plan.cache / f"scale-world-{customers}c-{plan.scale_days}d-s{plan.seed}"


REPLICATED_IDS = ("customer_id", "message_id", "event_id", "decision_id")
"""The columns a copy of a world renames (campaigns and offers stay shared: one catalog, one calendar)."""


def _prefixed(table: pa.Table, prefix: str) -> pa.Table:
    for name in REPLICATED_IDS:
        if name in table.column_names:
            ids = table[name].cast(pa.string())
            column = pc.if_else(pc.equal(ids, ""), ids, pc.binary_join_element_wise(prefix, ids, ""))
            table = table.set_column(table.column_names.index(name), name, column)
    return table


def replicate_world(source: Path, target: Path, copies: int) -> None:
    """Write `copies` copies of the world in `source` side by side in `target`: copy k's customers, messages,
    events and decisions get ids prefixed `kNN-` (copy 0 keeps its own), campaigns and offers are shared.

    The simulator holds a whole world in memory (about 7 GB at 100,000 customers × 90 days), so the largest
    worlds are copies of a smaller one: the pipeline reads as many customers and events as a world of that
    size has, each copy behaving like the one it copies.
    """
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for entry in sorted(source.iterdir()):
        if entry.name == "truth" or entry.name.startswith("scale-"):
            continue
        table_name = entry.name.split(".")[0]
        if entry.name in ("campaigns.csv", "offers.csv"):
            shutil.copy2(entry, target / entry.name)
            continue
        parts = sorted(entry.iterdir()) if entry.is_dir() else [entry]
        folder = target / table_name
        folder.mkdir()
        for part in parts:
            csv = part.suffix == ".csv"
            strings = pacsv.ConvertOptions(column_types=_all_strings(part))
            table = pacsv.read_csv(part, convert_options=strings) if csv else pq.read_table(part)
            for k in range(copies):
                copy = table if k == 0 else _prefixed(table, f"k{k:02d}-")
                out = folder / f"{part.stem}.k{k:02d}{part.suffix}"
                if csv:
                    pacsv.write_csv(copy, out)
                else:
                    pq.write_table(copy, out)
    (target / "truth").mkdir()
    shutil.copy2(source / "truth" / "world.json", target / "truth" / "world.json")


def _all_strings(path: Path) -> dict[str, pa.DataType]:
    """Every column of a CSV file read as text, so that a copy writes back what it read."""
    if path.suffix != ".csv":
        return {}
    header = path.open().readline().rstrip("\n").split(",")
    return dict.fromkeys(header, pa.string())


def _simulate(plan: Plan, customers: int, log: Path, console: Console) -> Stage:
    """The size's world, simulated unless the cache has it (then the time and peak it took are the cached ones).

    Sizes above `plan.scale_simulate_max` that are a multiple of it are copies of the world of that size
    (`replicate_world`): their time and peak are the smaller world's simulation plus the copying.
    """
    world = world_dir(plan, customers)
    marker = world / WORLD_MARKER
    if marker.exists() and not plan.rebuild:
        cached = json.loads(marker.read_text())
        return Stage("simulate", customers, cached["seconds"], cached["peak_rss"], cached.get("note", "cached"))
    shutil.rmtree(world, ignore_errors=True)
    largest = plan.scale_simulate_max
    if customers > largest and customers % largest == 0:
        base = _simulate(plan, largest, log, console)
        if base.seconds is None or base.peak_rss is None:
            return Stage("simulate", customers, note=base.note)
        copies = customers // largest
        console.print(f"copying the world of {largest:,} customers {copies} times")
        began = time.perf_counter()
        replicate_world(world_dir(plan, largest), world, copies)
        seconds = base.seconds + time.perf_counter() - began
        note = f"{copies} copies of the {largest:,}-customer world"
        marker.write_text(json.dumps({"seconds": seconds, "peak_rss": base.peak_rss, "note": note}))
        return Stage("simulate", customers, seconds, base.peak_rss, note)
    console.print(f"simulating {customers:,} customers × {plan.scale_days} days")
    arguments = ["simulate", str(world), "--customers", str(customers), "--days", str(plan.scale_days)]
    command = [sys.executable, "-m", "sendwise.cli", *arguments, "--seed", str(plan.seed)]
    run = watched(command, bench_environment(), log, plan.scale_memory_limit, float("inf"))
    if run.returncode != 0:
        return Stage("simulate", customers, note=run.stopped or f"failed (exit {run.returncode}); see {log}")
    marker.write_text(json.dumps({"seconds": run.seconds, "peak_rss": run.peak_rss}))
    return Stage("simulate", customers, run.seconds, run.peak_rss)


def _run_group(
    stages: Sequence[str],
    home: Path,
    world: Path,
    env: dict[str, str],
    log: Path,
    plan: Plan,
    time_left: float,
    name: str | None = None,
) -> list[Stage]:
    """One process of stages (bench/stages.py): each stage's seconds and peak, or why it has none."""
    customers = 0
    out = log.with_suffix(f".{re.sub(r'[^a-z]+', '-', (name or stages[0]).lower()).strip('-')}.jsonl")
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "bench.stages", str(home), *stages, "--out", str(out), "--data", str(world)]
    run = watched(command, env, log, plan.scale_memory_limit, time_left)
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    results = []
    for record in records:
        peak = max(int(record["peak_rss"] or 0), run.peak_between(record["started_at"], record["ended_at"]))
        results.append(Stage(name or record["stage"], customers, float(record["seconds"]), peak))
    if len(records) < len(stages):
        why = run.stopped or f"failed (exit {run.returncode}); see {log}"
        results.append(Stage(name or stages[len(records)], customers, note=why))
    return results


def _redis_memory(url: str) -> tuple[int, int]:
    client = redis.Redis.from_url(url)
    info: dict[str, object] = client.info("memory")  # type: ignore[assignment]
    return int(str(info["used_memory"])), int(str(client.dbsize()))


def run_size(plan: Plan, customers: int, redis_url: str, console: Console) -> SizeRun:
    """Simulate (or reuse) the world of `customers` and build a fresh home from it, stage by stage."""
    result = SizeRun(customers, plan.scale_days)
    home = plan.cache / f"scale-home-{customers}c-{plan.scale_days}d-s{plan.seed}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    log = home / "scale.log"
    result.stages["simulate"] = _simulate(plan, customers, log, console)
    if result.stages["simulate"].seconds is None:
        return result
    world = world_dir(plan, customers)
    env = bench_environment(home)
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    began, load_start = time.perf_counter(), os.getloadavg()[0]
    for group in GROUPS:
        console.print(f"{customers:,} customers: {', '.join(group)}")
        time_left = plan.scale_time_limit - (time.perf_counter() - began)
        stages = _run_group(group, home, world, env, log, plan, time_left)
        for stage in stages:
            stage.customers = customers
            result.stages[stage.name] = stage
        if any(stage.seconds is None for stage in stages):
            result.load_average = (load_start, os.getloadavg()[0])
            return result
    result.load_average = (load_start, os.getloadavg()[0])
    redis.Redis.from_url(redis_url).flushall()
    redis_env = {**env, "SENDWISE_ONLINE_STORE": "redis", "SENDWISE_REDIS_URL": f"{redis_url}/0"}
    console.print(f"{customers:,} customers: materialize into Redis")
    (stage,) = _run_group(("materialize",), home, world, redis_env, log, plan, plan.scale_time_limit, REDIS_STAGE)
    stage.customers = customers
    result.stages[REDIS_STAGE] = stage
    if stage.seconds is not None:
        result.redis_used_memory, result.redis_keys = _redis_memory(redis_url)
    return result


def cell(stage: Stage | None) -> str:
    """`12.3 s · 1.20 GB`, or why the stage has no figure."""
    if stage is None:
        return "—"
    if stage.seconds is None or stage.peak_rss is None:
        return stage.note or "—"
    return f"{_duration(stage.seconds)} · {stage.peak_rss / 1e9:.2f} GB"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 600 else f"{seconds:.1f} s"


def growth_cell(small: Stage | None, large: Stage | None) -> str:
    """`×8.1 time, ×6.5 memory` per 10× customers between two sizes of a stage, where both have figures."""
    if small is None or large is None or small.seconds is None or large.seconds is None:
        return ""
    if not small.peak_rss or not large.peak_rss or small.seconds <= 0 or large.seconds <= 0:
        return ""
    time_growth = growth_per_tenfold(small.customers, large.customers, small.seconds, large.seconds)
    memory_growth = growth_per_tenfold(small.customers, large.customers, small.peak_rss, large.peak_rss)
    return f"×{time_growth:.1f} time, ×{memory_growth:.1f} memory"


def pipeline_stage(run: SizeRun) -> Stage:
    """The pipeline as one stage: its stages' seconds added up and the largest of their peaks."""
    stage = Stage("pipeline", run.customers, run.pipeline_seconds(), run.pipeline_peak())
    if stage.seconds is None:
        stage.note = next((s.note for s in run.stages.values() if s.note and s.seconds is None), "did not finish")
    return stage


def table_rows(runs: Sequence[SizeRun]) -> tuple[list[str], list[list[str]]]:
    """The stage × size table: a header and one row per stage (seconds · peak GB at each size, then the growth
    per 10× customers between consecutive sizes), the pipeline as a whole, then Redis's memory."""
    sizes = [f"{run.customers:,} × {run.days} d" for run in runs]
    pairs = list(pairwise(runs))
    header = ["stage", *sizes, *(f"growth per 10×, {a.customers:,} → {b.customers:,}" for a, b in pairs)]
    rows = []
    for name in (*STAGES, "pipeline"):

        def stage_of(run: SizeRun, name: str = name) -> Stage | None:
            return pipeline_stage(run) if name == "pipeline" else run.stages.get(name)

        rows.append(
            [
                name if name != "pipeline" else "pipeline (ingest to materialize)",
                *(cell(stage_of(run)) for run in runs),
                *(growth_cell(stage_of(a), stage_of(b)) for a, b in pairs),
            ]
        )
    redis_row = ["Redis used_memory after materializing"]
    redis_row += [f"{r.redis_used_memory / 1e9:.2f} GB" if r.redis_used_memory else "—" for r in runs]
    for a, b in pairs:
        both = a.redis_used_memory and b.redis_used_memory
        growth = growth_per_tenfold(a.customers, b.customers, a.redis_used_memory or 1, b.redis_used_memory or 1)
        redis_row.append(f"×{growth:.1f} memory" if both else "")
    rows.append(redis_row)
    loads = [f"{r.load_average[0]:.1f}, {r.load_average[1]:.1f}" for r in runs]
    rows.append(["load average (1 min) at start, end", *loads, *([""] * len(pairs))])
    return header, rows


def rich_table(runs: Sequence[SizeRun]) -> Table:
    header, rows = table_rows(runs)
    out = Table(title="scale: seconds · peak resident memory, per stage and size")
    for k, name in enumerate(header):
        out.add_column(name, justify="left" if k == 0 else "right")
    for row in rows:
        out.add_row(*row)
    return out


def markdown(runs: Sequence[SizeRun]) -> str:
    """The same table in Markdown, for bench/README.md's history and the README."""
    header, rows = table_rows(runs)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_rows(runs: Sequence[SizeRun]) -> list[Row]:
    """The main table's rows: the pipeline at each size, held to the bars at 1,000,000 × 90 days."""
    rows = []
    for run in runs:
        judged = run.customers >= TARGET_CUSTOMERS and run.days >= TARGET_DAYS
        size = f"{run.customers:,} customers × {run.days} days"
        stage = pipeline_stage(run)
        note = f"simulate {cell(run.stages.get('simulate'))} (not in the pipeline); load average "
        note += f"{run.load_average[0]:.1f} to {run.load_average[1]:.1f}"
        minutes = None if stage.seconds is None else stage.seconds / 60
        peak = stage.peak_rss
        rows.append(
            Row(
                SECTION,
                f"pipeline time, {size}",
                minutes,
                "—" if minutes is None else f"{minutes:.1f} min",
                Target("at most", TARGET_MINUTES, "≤ 60 min at 1,000,000 × 90 d"),
                note if minutes is not None else stage.note,
                judged,
            )
        )
        rows.append(
            Row(
                SECTION,
                f"pipeline peak memory, {size}",
                None if peak is None else float(peak),
                "—" if peak is None else gigabytes(peak),
                Target("at most", TARGET_BYTES, "≤ 16 GB at 1,000,000 × 90 d"),
                "the largest stage's peak resident set" if peak is not None else stage.note,
                judged,
            )
        )
        if run.redis_used_memory is not None:
            rows.append(
                Row(
                    SECTION,
                    f"Redis used_memory, {size}",
                    float(run.redis_used_memory),
                    gigabytes(run.redis_used_memory),
                    note=f"{run.redis_keys:,} keys after materializing",
                )
            )
    return rows


def measure(plan: Plan, console: Console) -> list[SizeRun]:
    """Every size in `plan.scale_sizes`, smallest first, the stage × size table printed after each."""
    runs: list[SizeRun] = []
    with redis_server() as url:
        for customers in sorted(plan.scale_sizes):
            runs.append(run_size(plan, customers, url, console))
            console.print(rich_table(runs))
    return runs


def run(plan: Plan, console: Console) -> list[Row]:
    """The section: every size measured, the table also as Markdown (for bench/README.md), the main table's rows."""
    runs = measure(plan, console)
    console.print("[dim]as Markdown:[/]")
    console.print(markdown(runs), markup=False, highlight=False, soft_wrap=True)
    return summary_rows(runs)
