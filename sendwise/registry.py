"""The registered models by name, and the champions that serve: what training registers and serving loads.

Training (`training.registry`) logs, registers and promotes versions; serving only reads the `champion` alias.
Both point MLflow at the tracking store of the settings (the home's, or `SENDWISE_MLFLOW_TRACKING_URI`) through
`connect`. A service keeps MLflow out of its own process: the `child` commands, run as `python -m
sendwise.champions export FOLDER`, write the champions' boosters into FOLDER for it, and `... versions` prints
where the aliases point (`sendwise.champions`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import lightgbm as lgb
import mlflow
import typer
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sendwise.champions import ALIAS, MODEL_NAMES, LoadedModel
from sendwise.settings import Settings

EXPERIMENT = "sendwise"
__all__ = [  # the models' names and their loaded form are `sendwise.champions`', which has no MLflow in it
    "EXPERIMENT",
    "MODEL_NAMES",
    "LoadedModel",
    "champion",
    "champion_version",
    "champion_versions",
    "connect",
    "load_champions",
    "load_version",
]


def connect(settings: Settings) -> MlflowClient:
    """Point MLflow at the settings' tracking store and make sure the experiment exists: its artifacts in the
    home beside a database, or where a tracking server chooses (the server stores what it is sent)."""
    settings.activate()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=settings.artifacts_uri)
    mlflow.set_experiment(EXPERIMENT)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def champion_version(client: MlflowClient, name: str) -> str | None:
    """The version `name`'s champion alias points at, if any."""
    try:
        return str(client.get_model_version_by_alias(name, ALIAS).version)
    except MlflowException:
        return None


def champion_versions(client: MlflowClient) -> dict[str, str]:
    """The champion version of every model of `MODEL_NAMES` that has one: what a service watching the registry
    compares with what it serves."""
    found = {name: champion_version(client, name) for name in MODEL_NAMES}
    return {name: version for name, version in found.items() if version is not None}


def load_version(name: str, version: str) -> LoadedModel:
    """One registered version's booster (by number: the alias may move while it loads)."""
    return LoadedModel(version=version, booster=mlflow.lightgbm.load_model(f"models:/{name}/{version}"))


def champion(client: MlflowClient, name: str) -> tuple[str, lgb.Booster] | None:
    """The version and booster that serve now, if any."""
    version = champion_version(client, name)
    if version is None:
        return None
    return version, load_version(name, version).booster


def load_champions(settings: Settings) -> dict[str, LoadedModel]:
    """Every model of `MODEL_NAMES` that has a champion, by name."""
    client = connect(settings)
    models: dict[str, LoadedModel] = {}
    for name in MODEL_NAMES:
        found = champion(client, name)
        if found is not None:
            models[name] = LoadedModel(version=found[0], booster=found[1])
    return models


child = typer.Typer(
    add_completion=False,
    pretty_exceptions_show_locals=False,  # a failure's locals would print the tracking URI, password and all
    help="The registry read for a service that keeps MLflow out of its process.",
)
TrackingUri = Annotated[str, typer.Option(envvar="MLFLOW_TRACKING_URI", help="the tracking store to read")]


def _client(tracking_uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@child.command()
def versions(tracking_uri: TrackingUri) -> None:
    """Print where each model's champion alias points, as JSON."""
    print(json.dumps(champion_versions(_client(tracking_uri))))


@child.command()
def export(
    folder: Annotated[Path, typer.Argument(help="where each booster is written, as NAME.txt")],
    pinned: Annotated[list[str] | None, typer.Argument(help="NAME=VERSION to export (default: the champions)")] = None,
    tracking_uri: TrackingUri = "",
) -> None:
    """Write the champions' boosters (or the versions pinned) into FOLDER; print their versions as JSON."""
    client = _client(tracking_uri)
    wanted = dict(item.split("=", 1) for item in pinned) if pinned else champion_versions(client)
    for name, version in wanted.items():
        load_version(name, version).booster.save_model(folder / f"{name}.txt")
    print(json.dumps(wanted))
