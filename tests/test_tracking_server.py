"""`SENDWISE_MLFLOW_TRACKING_URI`: a real `mlflow server` (a database and proxied artifacts) as the tracking store
and registry of the pipeline, the engine and the real `bentoml serve`, with nothing written to the home's mlruns/.

The settings and `sendwise ui` are checked without a server (fast lane); the rest shares one server and one
pipeline run on a small world of its own (slow).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import httpx
import lightgbm as lgb
import mlflow
import pytest
from mlflow import MlflowClient
from pydantic import ValidationError
from typer.testing import CliRunner

from sendwise.cli import app
from sendwise.raw import load_table
from sendwise.registry import MODEL_NAMES
from sendwise.settings import Settings
from tests.conftest import DEMO_BRAND
from tests.postgres_server import postgres_server
from tests.served import answers, bentoml_serve, free_port, running

WORLD_CUSTOMERS = 800
WORLD_DAYS = 30
WORLD_SEED = 3
START_SECONDS = 120
TOKEN = "tracking-server-test-token"
START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


# --- the settings, without a server --------------------------------------------------------------------------
def test_the_homes_sqlite_store_is_the_default(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert settings.artifacts_uri == (tmp_path / "mlruns" / "artifacts").as_uri()
    assert not settings.tracking_server
    assert "SENDWISE_MLFLOW_TRACKING_URI" not in settings.library_environment()


def test_a_tracking_server_is_the_store_and_chooses_where_artifacts_go(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri="http://mlflow:5000/")
    assert settings.tracking_uri == "http://mlflow:5000"
    assert settings.tracking_server and settings.artifacts_uri is None
    environment = settings.library_environment()
    assert environment["MLFLOW_TRACKING_URI"] == environment["MLFLOW_REGISTRY_URI"] == "http://mlflow:5000"
    assert environment["SENDWISE_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"  # what a served process reads
    with mock.patch.dict(os.environ):  # activating points this process's libraries at it: not past this test
        settings.activate()
    assert settings.home.is_dir() and not settings.mlruns_dir.exists()


def test_a_database_uri_keeps_the_artifacts_in_the_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, mlflow_tracking_uri="postgresql+psycopg2://mlflow@db/mlflow")
    assert settings.tracking_uri == "postgresql+psycopg2://mlflow@db/mlflow" and not settings.tracking_server
    assert settings.artifacts_uri == (tmp_path / "mlruns" / "artifacts").as_uri()


@pytest.mark.parametrize("uri", ["mlflow:5000", "file:///srv/mlruns", "/srv/mlruns", "ftp://host/x"])
def test_a_tracking_uri_of_another_kind_is_refused_by_name(tmp_path: Path, uri: str) -> None:
    with pytest.raises(ValidationError, match=r"mlflow_tracking_uri\n.*expected an MLflow tracking server"):
        Settings(home=tmp_path, mlflow_tracking_uri=uri)


def test_the_cli_names_the_variable_of_a_bad_tracking_uri(tmp_path: Path) -> None:
    env = {"SENDWISE_HOME": str(tmp_path), "SENDWISE_MLFLOW_TRACKING_URI": "mlflow:5000"}
    result = CliRunner().invoke(app, ["ui"], env=env)
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "SENDWISE_MLFLOW_TRACKING_URI: expected an MLflow tracking server" in said
    assert "got 'mlflow:5000'" in said


def test_ui_with_a_tracking_server_prints_the_servers_url_instead_of_starting_one(tmp_path: Path) -> None:
    env = {"SENDWISE_HOME": str(tmp_path), "SENDWISE_MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"}
    result = CliRunner().invoke(app, ["ui", "--port", "5999"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "MLflow's UI is the tracking server's own: http://mlflow.internal:5000"
    assert not (tmp_path / "mlruns").exists()


def test_the_evaluation_suites_worlds_keep_their_models_in_their_own_homes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A suite world's pipeline must not register (and promote) on the tracking server the home uses."""
    import training.evaluate

    monkeypatch.setenv("SENDWISE_MLFLOW_TRACKING_URI", "http://mlflow:5000")
    seen: dict[str, str] = {}

    def call(command: list[str], env: dict[str, str], **_: object) -> int:
        seen.update(env)
        return 0

    monkeypatch.setattr(training.evaluate.subprocess, "call", call)
    training.evaluate._run(["sendwise", "pipeline"], tmp_path / "home", tmp_path / "pipeline.log", "a world")
    assert seen["SENDWISE_HOME"] == str(tmp_path / "home") and "SENDWISE_MLFLOW_TRACKING_URI" not in seen


# --- a real mlflow server -----------------------------------------------------------------------------------
@dataclass
class TrackingServer:
    url: str
    artifacts: Path
    log: Path


@dataclass
class ServerWorld:
    server: TrackingServer
    settings: Settings
    world: Path


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The database the tracking server keeps runs and the registry in: a SQLite file, or a real PostgreSQL
    (what a server shared by several machines usually runs on)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('mlflow-db') / 'db.sqlite'}"
        return
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def tracking_server(backend_store: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    """`mlflow server` from the venv on `backend_store`, with proxied artifacts, on a free loopback port."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_store,
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = TrackingServer(f"http://127.0.0.1:{port}", folder / "artifacts", folder / "server.log")
    with running("mlflow server", command, folder, env, server.log, lambda: answers(f"{server.url}/health")):
        yield server


@pytest.fixture(scope="module")
def server_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small world of the module's own (one for both database backends)."""
    from sendwise.simulator import simulate

    world = tmp_path_factory.mktemp("server-world")
    simulate(world, customers=WORLD_CUSTOMERS, days=WORLD_DAYS, seed=WORLD_SEED, progress=False)
    return world


@pytest.fixture(scope="module")
def server_world(
    tracking_server: TrackingServer, server_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerWorld]:
    """`sendwise pipeline` through the real CLI on the module's world, tracked on the server. The environment
    the pipeline's settings put in place is put back afterwards (other tests use their own homes)."""
    saved = dict(os.environ)
    world = server_data
    home = tmp_path_factory.mktemp("server-home")
    env = {
        "SENDWISE_HOME": str(home),
        "SENDWISE_MLFLOW_TRACKING_URI": tracking_server.url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    result = CliRunner().invoke(app, ["pipeline", "--data", str(world)], env=env)
    if result.exit_code != 0:
        raise AssertionError(f"pipeline failed ({result.exit_code}):\n{result.output}\n{result.exception!r}")
    settings = Settings(home=home, mlflow_tracking_uri=tracking_server.url, brand_file=DEMO_BRAND)
    try:
        yield ServerWorld(tracking_server, settings, world)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _server_client(server: TrackingServer) -> MlflowClient:
    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def _champions(client: MlflowClient) -> dict[str, str]:
    return {name: str(client.get_model_version_by_alias(name, "champion").version) for name in MODEL_NAMES}


@pytest.mark.integration
@pytest.mark.slow
def test_the_champions_are_registered_on_the_server(server_world: ServerWorld) -> None:
    client = _server_client(server_world.server)
    assert {m.name for m in client.search_registered_models()} == set(MODEL_NAMES)
    for name, version in _champions(client).items():
        registered = client.get_model_version(name, version)
        assert registered.tags["promotion"].startswith(f"first {name} model")
        run = client.get_run(registered.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        assert run.data.params["feature_service"].endswith("_v1")
        assert 0.6 < run.data.metrics["valid_auc"] < 1.0


@pytest.mark.integration
@pytest.mark.slow
def test_the_artifacts_went_through_the_server_and_nothing_into_the_homes_mlruns(server_world: ServerWorld) -> None:
    settings, artifacts = server_world.settings, server_world.server.artifacts
    assert not settings.mlruns_dir.exists()
    assert not list(settings.home.rglob("mlflow.db"))
    stored = {path.name for path in artifacts.rglob("*") if path.is_file()}
    assert {"model.lgb", "MLmodel", "promotion.json"} <= stored
    client = _server_client(server_world.server)
    for name, version in _champions(client).items():
        served = mlflow.lightgbm.load_model(f"models:/{name}/{version}")
        uploaded = [lgb.Booster(model_file=str(path)) for path in artifacts.rglob("model.lgb")]
        assert any(served.model_to_string() == booster.model_to_string() for booster in uploaded), name


@pytest.mark.integration
@pytest.mark.slow
def test_a_service_reads_the_servers_champions_without_mlflow(server_world: ServerWorld) -> None:
    """What the service does instead of importing MLflow: the aliases over the server's REST API, the boosters
    exported by a child process; the same versions and models as MLflow's own client gives."""
    from sendwise.champions import ChampionAliases, load_champions_apart

    server = server_world.server
    client = _server_client(server)
    champions = _champions(client)
    aliases = ChampionAliases(server.url)
    assert aliases.versions() == champions
    exported = load_champions_apart(server.url)
    assert {name: model.version for name, model in exported.items()} == champions
    for name, version in champions.items():
        expected = mlflow.lightgbm.load_model(f"models:/{name}/{version}").model_to_string()
        assert exported[name].booster.model_to_string() == expected, name
    client.delete_registered_model_alias("send_time", "champion")
    try:
        assert aliases.versions() == {k: v for k, v in champions.items() if k != "send_time"}  # no champion: none
    finally:
        client.set_registered_model_alias("send_time", "champion", champions["send_time"])
    assert aliases.versions() == champions


@pytest.mark.e2e
@pytest.mark.integration
@pytest.mark.slow
def test_the_engine_and_the_served_service_decide_with_the_servers_champions(server_world: ServerWorld) -> None:
    from serving.engine import Engine
    from serving.schemas import DecideRequest

    settings = server_world.settings
    champions = _champions(_server_client(server_world.server))
    engine = Engine.load(settings, log_decisions=False)
    assert engine.model_versions() == champions
    customers = load_table(settings, "customers")
    assert customers is not None
    ids = customers.loc[customers["consent_email"], "customer_id"].head(50).tolist()
    body = {
        "recipients": [{"customer_id": i} for i in ids],
        "campaign": {"kind": "promotional", "topic": "outdoor"},
        "window_start": START.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "window_hours": 24,
    }
    in_process = engine.decide(DecideRequest.model_validate(body))
    sent = [d for d in in_process.decisions if d.send]
    assert len(sent) >= 45  # the others unsubscribed or bounced
    for decision in sent:
        assert decision.open_probability == pytest.approx(max(decision.hourly_open_probability))
        assert 0.0 < decision.open_probability < 1.0 and decision.offers

    with bentoml_serve(settings, TOKEN) as url:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{url}/v1/models", headers=auth, timeout=30).json()["model_versions"] == champions
        answer = httpx.post(f"{url}/v1/decide", json=body, headers=auth, timeout=120)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    assert served["model_versions"] == champions
    for over_http, here in zip(served["decisions"], in_process.decisions, strict=True):
        assert over_http["customer_id"] == here.customer_id
        assert over_http["send"] == here.send
        assert [o["offer_id"] for o in over_http["offers"]] == [o.offer_id for o in here.offers]
        if here.send_at is None:
            assert over_http["send_at"] is None
            continue
        assert datetime.fromisoformat(over_http["send_at"].replace("Z", "+00:00")) == here.send_at
        assert over_http["open_probability"] == pytest.approx(here.open_probability, rel=1e-6)
