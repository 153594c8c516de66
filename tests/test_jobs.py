"""The jobs behind `sendwise train`, `pipeline`, `report` and `feast`, on the session's pipeline home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from sendwise.settings import Settings
from tests.conftest import PipelineHome
from training.registry import MODEL_NAMES
from training.samples import SAMPLE_ROWS, load_sample

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _sendwise(arguments: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """`sendwise ARGUMENTS...` in a process of its own, from a folder that is not the home (wide, no colour)."""
    env = {**os.environ, "SENDWISE_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    command = [sys.executable, "-m", "sendwise.cli", *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False, cwd=home.parent, timeout=300)


def test_feast_lists_the_views_the_pipeline_applied(pipeline_home: PipelineHome) -> None:
    finished = _sendwise(["feast", "feature-views", "list"], pipeline_home.settings.home)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    rows = {line.split()[0]: line.split()[1] for line in finished.stdout.splitlines()[1:] if line.strip()}
    assert rows == {
        "customer_fv": "{'customer'}",
        "customer_attributes_fv": "{'customer'}",
        "engagement_fv": "{'customer'}",
        "offer_fv": "{'offer'}",
        "latest_activity_fv": "{'customer'}",
        "email_state_fv": "{'customer'}",
    }


def test_feast_plan_compares_the_definitions_with_the_home_registry(pipeline_home: PipelineHome) -> None:
    """The plan reads the definitions module the pipeline wrote into the home's repository: nothing to create or
    delete (Feast lists materialized views as updated, by their batch source's timestamps), the sources in the
    home."""
    registry = pipeline_home.settings.feast_dir / "registry.db"
    before = registry.stat().st_mtime_ns
    finished = _sendwise(["feast", "plan"], pipeline_home.settings.home)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    changes = [line for line in finished.stdout.splitlines() if line.startswith(("Created", "Deleted", "Updated"))]
    assert not [line for line in changes if "sqlite table" not in line and not line.startswith("Updated")], changes
    assert not [line for line in changes if line.startswith("Deleted")], changes
    assert f'uri: "{pipeline_home.settings.feature_tables_dir}/engagement_features.parquet"' in finished.stdout
    assert registry.stat().st_mtime_ns == before  # a plan changes nothing


def test_feast_help_is_feasts(tmp_path: Path) -> None:
    finished = _sendwise(["feast", "--help"], tmp_path / "home")
    assert finished.returncode == 0, finished.stderr
    assert "Usage: sendwise feast" in finished.stdout and "feature-views" in finished.stdout


def test_training_keeps_a_sample_for_each_serving_model(pipeline_home: PipelineHome) -> None:
    settings = pipeline_home.settings
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    runs = {name: client.get_model_version_by_alias(name, "champion").run_id for name in MODEL_NAMES}
    assert runs["open_propensity"] == runs["send_time"]  # one booster, one run, one sample
    for name, run_id in runs.items():
        assert run_id is not None
        sample = load_sample(settings, run_id)
        assert sample is not None and 0 < len(sample) <= SAMPLE_ROWS, name
        assert "customer_id" not in sample.columns
    assert {p.stem for p in settings.training_sets_dir.glob("*.parquet")} == set(runs.values())


def test_report_reads_what_the_pipeline_wrote(pipeline_home: PipelineHome) -> None:
    """Nothing rebuilt or applied: the feature tables and the Feast registry are left as the pipeline wrote them."""
    from sendwise.cli import app

    settings = pipeline_home.settings
    watched = [*settings.feature_tables_dir.glob("*.parquet"), settings.feast_dir / "registry.db"]
    before = {path: path.stat().st_mtime_ns for path in watched}
    result = CliRunner().invoke(app, ["report"], env={"SENDWISE_HOME": str(settings.home)})
    assert result.exit_code == 0, result.output
    index = settings.reports_dir / "site" / "index.html"
    assert f"open {index}" in result.output  # on one line, however long the home's path
    said = " ".join(result.output.split())
    assert "report written in" in said and "drivers" in said and "offers" in said
    assert index.read_text(encoding="utf-8").startswith("<!doctype html>")
    for name in MODEL_NAMES:
        assert f'id="{name}"' in (settings.reports_dir / "site" / "drivers.html").read_text(encoding="utf-8")
    assert {path: path.stat().st_mtime_ns for path in watched} == before


def test_report_without_a_pipeline_says_what_to_run(tmp_path: Path) -> None:
    from sendwise.cli import app

    result = CliRunner().invoke(app, ["report", "--model", "offer"], env={"SENDWISE_HOME": str(tmp_path / "home")})
    assert result.exit_code == 2
    said = " ".join(result.output.split())  # the console wraps long lines where the home's path happens to end
    assert "no next_best_offer champion" in said and "sendwise pipeline --data DATA_DIR" in said
    assert not (Settings(home=tmp_path / "home").feature_tables_dir).exists()
