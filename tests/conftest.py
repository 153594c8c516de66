"""Shared fixtures: one small simulated world, run once through the real pipeline (CLI included).

Every test that needs that run is marked `slow` (and `integration`) here, so that `make test-fast`
(`pytest -m "not slow"`) never starts it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sendwise.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
WORLD_CUSTOMERS = 1500
WORLD_DAYS = 45
WORLD_SEED = 3


@dataclass
class PipelineHome:
    world: Path
    settings: Settings
    output: str


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded world of 1,500 customers over 45 days, with its truth."""
    from sendwise.simulate import simulate

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
    settings = Settings(home=home)
    settings.activate()
    return settings, result.output


@pytest.fixture(scope="session")
def customers(pipeline_home: PipelineHome) -> pd.DataFrame:
    """The small world's customers, as its raw store holds them."""
    from sendwise.raw import load_table

    frame = load_table(pipeline_home.settings, "customers")
    assert frame is not None
    return frame


@pytest.fixture(scope="session")
def engine(pipeline_home: PipelineHome):  # type: ignore[no-untyped-def]
    from serving.engine import Engine

    return Engine.load(pipeline_home.settings)


@pytest.fixture(autouse=True)
def _no_telemetry() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the session's pipeline run is slow (minutes, once) and an integration test."""
    for item in items:
        if "pipeline_home" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.integration)
