"""The registered models by name, and the champions that serve: what training registers and serving loads.

Training (`training.registry`) logs, registers and promotes versions; serving only reads the `champion` alias.
Both point MLflow at the tracking store of the settings (the home's, or `SENDWISE_MLFLOW_TRACKING_URI`) through
`connect`.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sendwise.settings import Settings

EXPERIMENT = "sendwise"
MODEL_NAMES = ("open_propensity", "send_time", "next_best_offer")


@dataclass
class LoadedModel:
    """A champion as it serves: its registered version and its booster."""

    version: str
    booster: lgb.Booster


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
        return str(client.get_model_version_by_alias(name, "champion").version)
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
