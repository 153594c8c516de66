"""The world and home the benchmarks run on, built once with the real CLI and cached between runs.

A home is built exactly as a user builds one: `sendwise simulate` then `sendwise pipeline`, each in its own
process (so the pipeline's memory never counts against the benchmark process). One change is made to the
simulated world before the pipeline runs: catalog offers are added until at least `min_offers` are eligible
at the decide window, because the benchmark decides over at least 12 offers and the simulator's catalog
has 11 eligible at its end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from rich.console import Console

from bench.plan import Plan
from sendwise.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
WORLD_MARKER = "bench-world.json"
HOME_MARKER = "bench-home.json"
FINGERPRINTED = ("sendwise", "features", "training")
"""The code a home is built by: when it changes, the cached home is built again (its models may no longer fit
the features the code computes), unless `--stale-ok`."""
OFFER_CATEGORIES = ("outdoor", "books", "fashion", "home", "beauty", "electronics", "sports", "kids")


@dataclass(frozen=True)
class BenchHome:
    """A built home and what every benchmark needs to know about it."""

    world: Path
    settings: Settings
    window_start: datetime
    """The decide window starts where the world's data ends, as `sendwise evaluate` does: the same offers are
    eligible and the same features are fresh whatever the day the benchmark runs."""
    recipients: list[str]
    """Customers that may be emailed (`email_eligible`): every decision about them is a full one."""
    built_at: str


def bench_environment(home: Path | None = None) -> dict[str, str]:
    """The environment of every process the benchmarks start: no telemetry, and the home when given."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "FEAST_USAGE": "False"}
    if home is not None:
        env.update(Settings(home=home).library_environment())
    return env


def code_fingerprint() -> str:
    """A hash of the Python sources that build a home."""
    digest = hashlib.sha256()
    for package in FINGERPRINTED:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(REPO_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _read_marker(path: Path) -> dict[str, object] | None:
    try:
        loaded = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _run_cli(arguments: list[str], home: Path | None, console: Console, what: str) -> None:
    """One `sendwise` command in its own process, its progress shown as it runs."""
    console.rule(f"[bold]{what}")
    began = time.perf_counter()
    command = [sys.executable, "-m", "sendwise.cli", *arguments]
    result = subprocess.run(command, cwd=REPO_ROOT, env=bench_environment(home), check=False)
    if result.returncode != 0:
        raise RuntimeError(f"`sendwise {' '.join(arguments)}` failed with exit code {result.returncode} (output above)")
    console.print(f"[dim]{what}: {time.perf_counter() - began:.0f} s[/]")


def world_end(world: Path) -> datetime:
    """Where the simulated world's data ends (truth/world.json)."""
    path = world / "truth" / "world.json"
    try:
        end = json.loads(path.read_text())["end"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as error:
        raise RuntimeError(f"{path} does not say where the world ends (key 'end'): rebuild with --rebuild") from error
    return pd.Timestamp(end).tz_convert(UTC).ceil("h").to_pydatetime()


def eligible_offers(offers: pd.DataFrame, at: datetime | pd.Timestamp) -> pd.Series:
    """Which offers the engine scores at `at` (its rule): in stock, started and not ended."""
    inventory = pd.to_numeric(offers["inventory"], errors="coerce")
    starts = pd.to_datetime(offers["starts_at"], utc=True)
    ends = pd.to_datetime(offers["ends_at"], utc=True)
    stamp = pd.Timestamp(at)
    return ~(inventory <= 0) & (starts.isna() | (starts <= stamp)) & (ends.isna() | (ends > stamp))


def add_catalog_offers(world: Path, at: datetime, min_offers: int) -> int:
    """Append discount offers to the world's offers.csv until `min_offers` are eligible at `at`; how many."""
    path = world / "offers.csv"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: the simulator writes its catalog there")
    delimiter = ";" if ";" in path.read_text().splitlines()[0] else ","
    offers = pd.read_csv(path, sep=delimiter, dtype={"offer_id": str})
    missing = min_offers - int(eligible_offers(offers, at).sum())
    if missing <= 0:
        return 0
    added = pd.DataFrame(
        {
            "offer_id": [f"of-bench-{k:02d}" for k in range(1, missing + 1)],
            "kind": "discount",
            "category": [OFFER_CATEGORIES[k % len(OFFER_CATEGORIES)] for k in range(missing)],
            "discount_pct": [10.0 + 5 * (k % 4) for k in range(missing)],
            "price": [50.0 + 10 * k for k in range(missing)],
            "margin": [15.0 + 2 * k for k in range(missing)],
            "inventory": 100_000,
            "starts_at": (pd.Timestamp(at) - pd.Timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ends_at": (pd.Timestamp(at) + pd.Timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    pd.concat([offers, added], ignore_index=True).to_csv(path, sep=delimiter, index=False)
    return missing


def _build_world(plan: Plan, world: Path, console: Console) -> None:
    shutil.rmtree(world, ignore_errors=True)
    arguments = ["simulate", str(world), "--customers", str(plan.customers), "--days", str(plan.days)]
    _run_cli([*arguments, "--seed", str(plan.seed)], None, console, f"simulating {plan.customers:,} customers")
    added = add_catalog_offers(world, world_end(world), plan.min_offers)
    marker = {"plan": plan.world_name, "built_at": datetime.now(UTC).isoformat(), "offers_added": added}
    (world / WORLD_MARKER).write_text(json.dumps(marker))


def _build_home(world: Path, home: Path, console: Console) -> None:
    shutil.rmtree(home, ignore_errors=True)
    _run_cli(["pipeline", "--data", str(world)], home, console, "running the pipeline (ingest, features, training)")
    world_marker = _read_marker(world / WORLD_MARKER) or {}
    marker = {
        "world_built_at": world_marker.get("built_at"),
        "built_at": datetime.now(UTC).isoformat(),
        "code": code_fingerprint(),
    }
    (home / HOME_MARKER).write_text(json.dumps(marker))


def eligible_recipients(settings: Settings) -> list[str]:
    """The home's customers that may be emailed, from the customer feature table the pipeline wrote."""
    path = settings.feature_tables_dir / "customer_features.parquet"
    table = pd.read_parquet(path, columns=["customer_id", "email_eligible"])
    ids = table.loc[table["email_eligible"] > 0, "customer_id"].astype(str).drop_duplicates()
    if ids.empty:
        raise RuntimeError(f"{path} has no customer with email_eligible > 0: nothing to decide")
    return ids.tolist()


def prepare_home(plan: Plan, console: Console) -> BenchHome:
    """The cached world and home of `plan`, built first when missing (or when `plan.rebuild`)."""
    world = plan.cache / f"world-{plan.world_name}"
    home = plan.cache / f"home-{plan.world_name}"
    world_marker = _read_marker(world / WORLD_MARKER)
    if plan.rebuild or world_marker is None:
        _build_world(plan, world, console)
        world_marker = _read_marker(world / WORLD_MARKER) or {}
    home_marker = _read_marker(home / HOME_MARKER)
    stale = home_marker is not None and home_marker.get("code") != code_fingerprint()
    if stale and plan.stale_ok:
        console.print(f"[yellow]reusing {home} although {', '.join(FINGERPRINTED)} changed since it was built[/]")
    elif stale:
        console.print(f"[yellow]{', '.join(FINGERPRINTED)} changed since {home} was built: building it again[/]")
    if (
        plan.rebuild
        or home_marker is None
        or home_marker.get("world_built_at") != world_marker.get("built_at")
        or (stale and not plan.stale_ok)
    ):
        _build_home(world, home, console)
        home_marker = _read_marker(home / HOME_MARKER) or {}
    settings = Settings(home=home)
    return BenchHome(
        world=world,
        settings=settings,
        window_start=world_end(world),
        recipients=eligible_recipients(settings),
        built_at=str(home_marker.get("built_at")),
    )


def clear_decision_log(settings: Settings) -> None:
    """Every decide call appends to the home's decision log; a cached home should not grow run after run."""
    shutil.rmtree(settings.decisions_dir, ignore_errors=True)
