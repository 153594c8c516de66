"""MLflow: runs with params, metrics, data window and feature service; versions registered and promoted.

The names, the connection and loading a champion live in `sendwise.registry` (serving reads them too); they
are named here again for the training code that imports them from this module."""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sendwise.registry import EXPERIMENT, MODEL_NAMES, champion, connect
from training.datasets import TrainingSet
from training.models import auc, refit_held_out

__all__ = [
    "EXPERIMENT",
    "MODEL_NAMES",
    "HeldOut",
    "Promotion",
    "champion",
    "code_version",
    "connect",
    "log_booster",
    "promote",
    "record_promotions",
]
PIP_REQUIREMENTS = ["lightgbm"]


@dataclass
class Promotion:
    """Whether a challenger became champion, why, and the figures the decision was made on."""

    name: str
    version: str
    promoted: bool
    reason: str
    metric: str = ""
    challenger_score: float = float("nan")
    champion_version: str | None = None
    champion_score: float | None = None
    champion_scored: str = ""
    window: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: a score that could not be computed is null."""
        return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in asdict(self).items()}


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


def _trained_until(client: MlflowClient, name: str, version: str) -> tuple[str, pd.Timestamp | None]:
    """The run that trained a version, and the time of the last row it was fit on (None: unknown)."""
    run_id = client.get_model_version(name, version).run_id or f"{name}/{version}"
    try:
        data_end = client.get_run(run_id).data.params.get("data_end")
    except MlflowException:
        return run_id, None
    return run_id, pd.Timestamp(data_end) if data_end else None


@dataclass
class HeldOut:
    """The later part of one training set: the window where a challenger and the champion are scored alike.

    Neither side may have been fit on a row of the window, or the score measures memory instead of skill. The
    challenger's score comes from its booster fit on the earlier part only (the registered booster is refit on
    everything). The champion's registered booster is scored as it is when the rows it was fit on all precede
    the window; otherwise (a retrain on overlapping data, such as the same data again) its recipe, the
    parameters and features its booster carries, is fit on the same earlier part, early-stopped on the window
    exactly like the challenger, and that booster is scored. Both sides then saw the same rows, so an unchanged
    recipe ties, and a tie keeps the champion.
    """

    data: TrainingSet
    _champion_predictions: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict, init=False, repr=False)

    @property
    def label(self) -> np.ndarray:
        return self.data.label[self.data.valid]

    def window(self, rows: np.ndarray) -> dict[str, str]:
        times = self.data.times[self.data.valid][rows]
        return {
            "start": str(self.data.cut),
            "end": str(times.max()),
            "rows": str(int(rows.sum())),
            "positives": str(int(self.label[rows].sum())),
        }

    def champion_prediction(
        self, client: MlflowClient, name: str, version: str, booster: lgb.Booster
    ) -> tuple[np.ndarray, str]:
        """Predictions on the window by the champion without the window's rows, and how they were made."""
        run_id, trained_until = _trained_until(client, name, version)
        if run_id not in self._champion_predictions:
            self._champion_predictions[run_id] = self._predict_without_window(booster, trained_until)
        return self._champion_predictions[run_id]

    def _predict_without_window(
        self, booster: lgb.Booster, trained_until: pd.Timestamp | None
    ) -> tuple[np.ndarray, str]:
        columns = booster.feature_name()
        missing = [c for c in columns if c not in self.data.design.columns]
        if missing:
            raise ValueError(f"features missing: {missing[:5]}")
        if trained_until is not None and trained_until < self.data.cut:
            how = f"champion scored as registered (fit on rows up to {_minute(trained_until)}, before the window)"
            return np.asarray(booster.predict(self.data.design.loc[self.data.valid, columns])), how
        until = "an unknown time" if trained_until is None else _minute(trained_until)
        how = (
            f"champion's parameters and features refit on the rows before {_minute(self.data.cut)} like "
            f"the challenger's (its registered booster saw rows up to {until}, inside the window)"
        )
        return refit_held_out(self.data, booster), how


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    challenger_prediction: np.ndarray,
    held_out: HeldOut,
    metric: str,
    rows: np.ndarray | None = None,
) -> Promotion:
    """Make `version` champion if there is none, or if it beats the champion on the same held-out window.

    `challenger_prediction` is the challenger's held-out booster's prediction on every row of the window;
    `rows` picks the rows the metric (AUC) is taken over (default: all). A tie does not promote.
    """
    rows = np.ones(len(held_out.label), dtype=bool) if rows is None else rows
    label = held_out.label[rows]
    window = held_out.window(rows)
    where = f"the held-out window {_minute(window['start'])} to {_minute(window['end'])} ({window['rows']} rows)"
    challenger_score = auc(label, challenger_prediction[rows])
    client.set_registered_model_alias(name, "challenger", version)
    current = champion(client, name)
    decision = Promotion(name, version, True, "", metric, challenger_score, window=window)
    if current is None:
        decision.reason = f"first {name} model: {metric} {challenger_score:.4f} on {where}"
    else:
        decision.champion_version, booster = current
        try:
            prediction, decision.champion_scored = held_out.champion_prediction(
                client, name, decision.champion_version, booster
            )
            decision.champion_score = auc(label, prediction[rows])
        except Exception as error:  # noqa: BLE001 - a champion that cannot score the new features loses
            decision.champion_score = float("nan")
            decision.champion_scored = f"champion could not score the new features: {error}"
        decision.promoted = bool(np.isnan(decision.champion_score) or challenger_score > decision.champion_score)
        verdict = "beats" if decision.promoted else "does not beat"
        tie = " (a tie keeps the champion)" if challenger_score == decision.champion_score else ""
        decision.reason = (
            f"challenger v{version} {metric} {challenger_score:.4f} {verdict} champion v{decision.champion_version} "
            f"{decision.champion_score:.4f} ({challenger_score - decision.champion_score:+.4f}){tie} on {where}; "
            f"{decision.champion_scored}"
        )
    if decision.promoted:
        client.set_registered_model_alias(name, "champion", version)
        client.delete_registered_model_alias(name, "challenger")
    client.set_model_version_tag(name, version, "promotion", decision.reason)
    return decision


def _minute(timestamp: pd.Timestamp | str) -> str:
    """A time to the minute, in UTC (naive times are taken as UTC)."""
    stamp = pd.Timestamp(timestamp)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def record_promotions(client: MlflowClient, run_id: str, promotions: list[Promotion]) -> None:
    """Keep the promotion decisions with the run that trained the challenger: tags and promotion.json."""
    for decision in promotions:
        client.set_tag(run_id, f"promotion.{decision.name}", decision.reason)
        client.set_tag(run_id, f"promoted.{decision.name}", str(decision.promoted).lower())
    client.log_dict(run_id, {"promotions": [d.to_dict() for d in promotions]}, "promotion.json")
