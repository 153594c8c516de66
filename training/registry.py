"""MLflow: runs with params, metrics, data window and feature service; versions with `champion` aliases."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sendwise.settings import Settings
from training.models import auc

EXPERIMENT = "sendwise"
MODEL_NAMES = ("open_propensity", "send_time", "next_best_offer")
PIP_REQUIREMENTS = ["lightgbm"]


@dataclass
class Promotion:
    name: str
    version: str
    promoted: bool
    reason: str


def connect(settings: Settings) -> MlflowClient:
    """Point MLflow at the home's store and make sure the experiment keeps its artifacts there."""
    settings.activate()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=settings.artifacts_uri)
    mlflow.set_experiment(EXPERIMENT)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def code_version() -> str:
    """The git commit of the code that trained, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def log_booster(booster: lgb.Booster, registered_names: list[str]) -> dict[str, str]:
    """Log the booster in the active run and register it under each name; returns name -> version."""
    info = mlflow.lightgbm.log_model(booster, name="model", pip_requirements=PIP_REQUIREMENTS)
    versions = {}
    for name in registered_names:
        version = mlflow.register_model(info.model_uri, name)
        versions[name] = str(version.version)
    return versions


def champion(client: MlflowClient, name: str) -> tuple[str, lgb.Booster] | None:
    """The version and booster that serve now, if any."""
    try:
        version = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    booster = mlflow.lightgbm.load_model(f"models:/{name}@champion")
    return str(version.version), booster


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    challenger_score: float,
    score_champion: callable,  # type: ignore[valid-type]
    metric: str,
) -> Promotion:
    """Make `version` champion if there is none or if it beats the champion on the same held-out window."""
    client.set_registered_model_alias(name, "challenger", version)
    current = champion(client, name)
    if current is None:
        reason = f"first {name} model: {metric} {challenger_score:.4f} on the held-out window"
        promoted = True
    else:
        champion_version, booster = current
        try:
            champion_score = float(score_champion(booster))
        except Exception as error:  # noqa: BLE001 - a champion that cannot score the new features loses
            champion_score = float("nan")
            reason_error = f" (champion v{champion_version} could not score the new features: {error})"
        else:
            reason_error = ""
        promoted = bool(np.isnan(champion_score) or challenger_score > champion_score)
        verdict = "beats" if promoted else "does not beat"
        reason = (
            f"challenger v{version} {metric} {challenger_score:.4f} {verdict} champion v{champion_version} "
            f"{champion_score:.4f} on the same held-out window{reason_error}"
        )
    if promoted:
        client.set_registered_model_alias(name, "champion", version)
        client.delete_registered_model_alias(name, "challenger")
    client.set_model_version_tag(name, version, "promotion", reason)
    return Promotion(name=name, version=version, promoted=promoted, reason=reason)


def champion_auc_scorer(design, label: np.ndarray):  # type: ignore[no-untyped-def]
    """A function that scores a champion booster by AUC on the given held-out design."""

    def score(booster: lgb.Booster) -> float:
        columns = booster.feature_name()
        missing = [c for c in columns if c not in design.columns]
        if missing:
            raise ValueError(f"features missing: {missing[:5]}")
        return auc(label, booster.predict(design[columns]))

    return score
