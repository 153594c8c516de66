"""`sendwise ui`: MLflow's real server on the home's store, read over its REST API and in a browser."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser

from tests.browser import Chromium
from tests.conftest import REPO_ROOT
from tests.served import answers, free_port, running

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODELS = {"open_propensity", "send_time", "next_best_offer"}


@pytest.fixture(scope="module")
def ui(pipeline_home, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:  # type: ignore[no-untyped-def]
    """`sendwise ui --port N` on a copy of the pipeline home's MLflow store, until the module is done; its URL
    and the file it printed to."""
    home = tmp_path_factory.mktemp("ui") / "home"
    shutil.copytree(pipeline_home.settings.mlruns_dir, home / "mlruns")
    port = free_port()
    log_path = home / "ui.log"
    env = {**os.environ, "SENDWISE_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "sendwise.cli", "ui", "--port", str(port)]
    with running("sendwise ui", command, REPO_ROOT, env, log_path, lambda: answers(f"{url}/health")):
        yield url, log_path


def test_ui_prints_its_url(ui: tuple[str, Path]) -> None:
    url, log = ui
    assert f"MLflow's UI on {url} (the runs and registry of " in log.read_text()


def test_ui_serves_the_homes_registry(ui: tuple[str, Path]) -> None:
    url, _ = ui
    answer = httpx.get(f"{url}/api/2.0/mlflow/registered-models/search", timeout=30)
    assert answer.status_code == 200, answer.text
    models = {m["name"]: m for m in answer.json()["registered_models"]}
    assert set(models) == MODELS
    for model in models.values():
        assert {"alias": "champion", "version": "1"} in model["aliases"]
        (latest,) = model["latest_versions"]
        tags = {tag["key"]: tag["value"] for tag in latest["tags"]}
        assert tags["promotion"].startswith(f"first {model['name']} model") and tags["previous_champion"] == ""
    experiment = httpx.get(
        f"{url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "sendwise"}, timeout=30
    ).json()["experiment"]
    runs = httpx.post(
        f"{url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [experiment["experiment_id"]]}, timeout=30
    ).json()["runs"]
    assert {run["info"]["run_name"] for run in runs} == {"open_propensity", "next_best_offer"}


def test_ui_page_lists_the_models_in_a_browser(ui: tuple[str, Path], browser: Chromium) -> None:
    url, _ = ui
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and "<title>MLflow</title>" in page.text

    def models_page(chromium: Browser) -> str:
        tab = chromium.new_page()
        try:
            tab.goto(f"{url}/#/models", timeout=120_000)  # the page keeps polling: never network-idle
            tab.get_by_text("next_best_offer").first.wait_for(timeout=60_000)
            return tab.inner_text("body")
        finally:
            tab.close()

    shown = browser.run(models_page)
    assert all(name in shown for name in MODELS), shown[:2000]
