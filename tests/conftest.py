"""Shared fixtures: one small simulated world, run once through the real pipeline (CLI included).

Every test that needs that run is marked `slow` (and `integration`) here, so that `make test-fast`
(`pytest -m "not slow"`) never starts it. A test that decides gets a copy of the pipeline's home whose decision
log is its own (`engine`, `home_with_own_decision_log`): what one test decides never counts in another's
frequency cap or no-repeat rule, whatever the order the tests run in.

A test that takes the `browser` fixture (one headless chromium for the session, tests/browser.py) runs a real
external program: it is marked `integration` here, and stays in the fast lane.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
from typer.testing import CliRunner

from sendwise.settings import Settings

if TYPE_CHECKING:
    from serving.engine import Engine
    from tests.browser import Chromium

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
DEMO_BRAND = REPO_ROOT / "examples" / "brand.yaml"
WORLD_CUSTOMERS = 1500
WORLD_DAYS = 45
WORLD_SEED = 3


@dataclass
class PipelineHome:
    world: Path
    settings: Settings
    output: str


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One real `redis-server` for the session (tests/redis_server.py): its URL without a db number."""
    from tests.redis_server import redis_server

    with redis_server() as url:
        yield url


REDIS_DB = 5
"""The session Redis's db that `redis_home` materializes into (not 0: the db number of the URL must be honoured)."""


@pytest.fixture(scope="session")
def redis_home(pipeline_home: PipelineHome, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A copy of the pipeline's home serving from Redis: its online store materialized into db 5 of the session's
    `redis-server`, as the pipeline materializes with `SENDWISE_ONLINE_STORE=redis`."""
    return materialized_in_redis(
        pipeline_home.settings, tmp_path_factory.mktemp("redis") / "home", f"{redis_url}/{REDIS_DB}"
    )


def materialized_in_redis(source: Settings, home: Path, url: str) -> Settings:
    """A copy of `source`'s home (without its decision log) whose online store is the Redis at `url`, its
    features materialized there up to the home's as-of (`features.store.materialize`, the pipeline's step)."""
    from features.store import materialize, open_store
    from sendwise.asof import resolve_as_of

    settings = home_with_own_decision_log(source, home).model_copy(update={"online_store": "redis", "redis_url": url})
    materialize(open_store(settings), resolve_as_of(settings).time.to_pydatetime())
    return settings


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded world of 1,500 customers over 45 days, with its truth."""
    from sendwise.simulator import simulate

    world = tmp_path_factory.mktemp("world")
    simulate(world, customers=WORLD_CUSTOMERS, days=WORLD_DAYS, seed=WORLD_SEED, progress=False)
    return world


@pytest.fixture(scope="session")
def pipeline_home(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> PipelineHome:
    """`sendwise pipeline --data WORLD` run through the real CLI into a home of its own."""
    settings, output = run_pipeline(small_world, tmp_path_factory.mktemp("home"))
    return PipelineHome(world=small_world, settings=settings, output=output)


def run_pipeline(world: Path, home: Path) -> tuple[Settings, str]:
    """`sendwise pipeline --data WORLD` through the real CLI into `home`; its settings and what it printed."""
    from sendwise.cli import app

    env = {"SENDWISE_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = CliRunner().invoke(app, ["pipeline", "--data", str(world)], env=env)
    if result.exit_code != 0:
        raise AssertionError(f"pipeline failed ({result.exit_code}):\n{result.output}\n{result.exception!r}")
    settings = Settings(home=home, brand_file=DEMO_BRAND)
    settings.activate()
    return settings, result.output


@pytest.fixture(scope="session")
def customers(pipeline_home: PipelineHome) -> pd.DataFrame:
    """The small world's customers, as its raw store holds them."""
    from sendwise.raw import load_table

    frame = load_table(pipeline_home.settings, "customers")
    assert frame is not None
    return frame


def home_with_own_decision_log(source: Settings, home: Path) -> Settings:
    """A copy of `source`'s home without its decision log, and the settings that point at it.

    The copy keeps the files' modification times, which are what the engine's snapshot signature reads: an
    engine loaded on `source` serves the copy without reading its features again.
    """
    shutil.copytree(source.home, home, ignore=shutil.ignore_patterns(source.decisions_dir.name))
    return source.model_copy(update={"home": home})


def with_own_decision_log(engine: Engine, source: Settings, home: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """`engine` deciding into a copy of `source`'s home for as long as `monkeypatch` lasts: its decisions are
    logged there, and only those count in its send history (the raw store's sends and exposures, then its own)."""
    settings = home_with_own_decision_log(source, home)
    monkeypatch.setattr(engine, "settings", settings)
    monkeypatch.setattr(engine, "history", type(engine.history).from_raw(settings))
    return engine


@pytest.fixture(scope="session")
def loaded_engine(pipeline_home: PipelineHome) -> Engine:
    """The small world's champions, loaded once: tests take them through `engine`."""
    from serving.engine import Engine

    return Engine.load(pipeline_home.settings)


@pytest.fixture
def engine(
    loaded_engine: Engine, pipeline_home: PipelineHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Engine:
    """The session's engine with a decision log of this test's own (it starts empty, as the pipeline left it)."""
    return with_own_decision_log(loaded_engine, pipeline_home.settings, tmp_path / "own-home", monkeypatch)


@pytest.fixture(scope="session")
def browser() -> Iterator[Chromium]:
    """Debian's chromium, headless through Playwright (in a thread of its own), started once for the session."""
    from tests.browser import launch_chromium

    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture(autouse=True)
def _no_telemetry() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the session's pipeline run is slow (minutes, once) and an integration test; one that
    drives the browser is an integration test."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "pipeline_home" in fixtures:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.integration)
        elif "browser" in fixtures:
            item.add_marker(pytest.mark.integration)
