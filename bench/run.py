"""`python -m bench`: build (or reuse) the benchmark world, run the benchmarks, print one table.

Sections (`--only`): `inprocess` (1: decisions per second at batch sizes 1, 100 and 10,000, and 2: the model
floor and the ratio to it), `http` (3: the real `bentoml serve`: a 10,000-recipient batch and single
recipients at concurrency 1 and 8), `memory` (4: the service's resident memory with 1,000,000 customers
online), `explain` (5: `/v1/explain` per recipient for each model, and `/v1/decide` with `explain`, in
process), `soak` (6: the real `bentoml serve` held at half its single-recipient throughput for 10 minutes:
errors and memory growth) and `redis` (7: sections 3 and 4 with the online features in Redis, beside the
in-memory figures of the same run); and, only when asked for, `scale` (8: the pipeline stage by stage on worlds
of 10,000, 100,000 and 1,000,000 customers, `--scale-sizes`: time and peak memory of each stage and how they
grow). See bench/README.md for how to read the table.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import psutil
import typer
from rich.console import Console

from bench import explain, inprocess, memory, on_redis, over_http, scale, soak
from bench.plan import DEFAULT_CACHE, DEFAULT_SECTIONS, HOME_SECTIONS, SECTIONS, Plan
from bench.report import Row, error_rows, table, write_json
from bench.world import BenchHome, prepare_home

Runner = Callable[[BenchHome, Plan, Console], list[Row]]
RUNNERS: dict[str, tuple[str, Runner]] = {
    "inprocess": (inprocess.SECTION, inprocess.run),
    "http": (over_http.SECTION, over_http.run),
    "memory": (memory.SECTION, memory.run),
    "explain": (explain.SECTION, explain.run),
    "soak": (soak.SECTION, soak.run),
    "redis": (on_redis.SECTION, on_redis.run),
}
"""The sections that run on the cached benchmark home; `scale` builds homes of its own (`bench.scale`)."""
WIDE = 180
"""Columns of the table when the output is not a terminal (a log file, a CI job)."""
QUIET_ENVIRONMENT = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "FEAST_USAGE": "False"}

app = typer.Typer(add_completion=False, help=__doc__)


def _sizes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        sizes = tuple(sorted({int(part.replace("_", "").strip()) for part in text.split(",") if part.strip()}))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 100:
        raise typer.BadParameter(
            f"{text!r}: give comma-separated numbers of customers, each at least 100 (e.g. 10000,100000)",
            param_hint="--scale-sizes",
        )
    return sizes


def _sections(only: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in only.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise typer.BadParameter(
            f"{only!r}: give a comma-separated subset of {','.join(SECTIONS)}", param_hint="--only"
        )
    return tuple(s for s in SECTIONS if s in chosen)


def machine() -> str:
    """CPU model, cores, memory and load average: figures from a busy or different machine read differently."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = psutil.virtual_memory().total / 1e9
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores of {model}, {memory_gb:.0f} GB, load average {load}"


def _plan(quick: bool, **given: object) -> Plan:
    overrides = {k: v for k, v in given.items() if v is not None}
    return Plan.quick_run(**overrides) if quick else Plan(**overrides)  # type: ignore[arg-type]


@app.command()
def bench(
    quick: Annotated[
        bool,
        typer.Option("--quick", help="20,000 customers, 200,000 online, fewer repetitions (not the full sizes)"),
    ] = False,
    only: Annotated[str, typer.Option(help=f"comma-separated sections to run, among {','.join(SECTIONS)}")] = ",".join(
        DEFAULT_SECTIONS
    ),
    cache: Annotated[
        Path, typer.Option(envvar="SENDWISE_BENCH_DIR", help="where worlds and homes are built and kept between runs")
    ] = DEFAULT_CACHE,
    customers: Annotated[int | None, typer.Option(min=20_000, help="customers of the world [100,000]")] = None,
    days: Annotated[int | None, typer.Option(min=7, help="days of simulated history [30]")] = None,
    online_customers: Annotated[
        int | None, typer.Option(min=10_000, help="customers in the online store for the memory benchmark [1,000,000]")
    ] = None,
    soak_seconds: Annotated[
        float | None, typer.Option(min=10, help="how long the soak holds half the throughput [600; --quick 60]")
    ] = None,
    scale_sizes: Annotated[
        str | None,
        typer.Option(help="customers of each world of the scale section, comma-separated [10000,100000,1000000]"),
    ] = None,
    scale_days: Annotated[int | None, typer.Option(min=7, help="days of each world of the scale section [90]")] = None,
    scale_memory_limit: Annotated[
        float | None, typer.Option(min=0.5, help="GB resident past which the scale section stops a stage [16]")
    ] = None,
    scale_time_limit: Annotated[
        float | None, typer.Option(min=1, help="minutes past which the scale section stops a size's pipeline [90]")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the world and of the recipients drawn")] = 0,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="build the world and homes again, ignoring the cache")
    ] = False,
    stale_ok: Annotated[
        bool,
        typer.Option("--stale-ok", help="reuse the cached home even if sendwise/, features/ or training/ changed"),
    ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write every row to this JSON file")] = None,
) -> None:
    """Run the benchmarks and print one table: each figure beside its target, PASS or MISS."""
    os.environ.update(QUIET_ENVIRONMENT)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    plan = _plan(
        quick,
        cache=cache.expanduser().resolve(),
        customers=customers,
        days=days,
        online_customers=online_customers,
        soak_seconds=soak_seconds,
        scale_sizes=_sizes(scale_sizes),
        scale_days=scale_days,
        scale_memory_limit=None if scale_memory_limit is None else scale_memory_limit * 1e9,
        scale_time_limit=None if scale_time_limit is None else scale_time_limit * 60,
        seed=seed,
        sections=_sections(only),
        rebuild=rebuild,
        stale_ok=stale_ok,
    )
    console = Console(width=None if sys.stdout.isatty() else WIDE)
    began = time.perf_counter()
    started_on = machine()
    console.print(f"[bold]sendwise benchmarks[/] on {started_on}; cache {plan.cache}")
    plan.cache.mkdir(parents=True, exist_ok=True)
    home = prepare_home(plan, console) if set(plan.sections) & set(HOME_SECTIONS) else None
    rows: list[Row] = []
    for section in plan.sections:
        title = scale.SECTION if section == "scale" else RUNNERS[section][0]
        console.rule(f"[bold]{title}")
        section_began = time.perf_counter()
        try:
            if section == "scale":
                rows += scale.run(plan, console)
            else:
                assert home is not None
                rows += RUNNERS[section][1](home, plan, console)
        except Exception as error:  # noqa: BLE001 - one failed section still leaves the others' figures
            console.print(f"[red]{title} failed:[/]\n{traceback.format_exc()}")
            rows += error_rows(title, error)
        console.print(f"[dim]{title}: {time.perf_counter() - section_began:.0f} s[/]")
    elapsed = time.perf_counter() - began
    if home is not None:
        size = f"{plan.customers:,} customers × {plan.days} days"
    else:
        size = f"worlds of {', '.join(f'{n:,}' for n in plan.scale_sizes)} customers × {plan.scale_days} days"
    size += " (quick: not the full sizes)" if plan.quick else ""
    where = f"home {home.settings.home}" if home is not None else f"cache {plan.cache}"
    caption = (
        f"{started_on} at the start; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end. "
        f"Ran in {elapsed / 60:.1f} min on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {where}."
    )
    console.print()
    console.print(table(rows, f"sendwise benchmarks: {size}", caption))
    if json_path is not None:
        home_dir = home.settings.home if home is not None else None
        context = {"plan": plan.__dict__, "machine": started_on, "seconds": elapsed, "home": home_dir}
        write_json(rows, json_path, context)
        console.print(f"rows written to {json_path}")
    if any(row.verdict == "ERROR" for row in rows):
        raise typer.Exit(code=1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
