"""MLflow: runs with params, metrics, data window and feature service; versions registered, promoted, listed
and rolled back.

The names, the connection and loading a champion live in `sendwise.registry` (serving reads them too); they
are named here again for the training code that imports them from this module.

Each version made champion keeps, as its tag `previous_champion`, the version it replaced, so that
`roll_back` can put that one back (and, again, the one before it).
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
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
    "RegistryError",
    "Rollback",
    "alias_version",
    "champion",
    "code_version",
    "connect",
    "list_versions",
    "log_booster",
    "make_champion",
    "previous_champion",
    "promote",
    "record_promotions",
    "roll_back",
    "window_text",
]
PIP_REQUIREMENTS = ["lightgbm"]
PREVIOUS_CHAMPION = "previous_champion"
"""Tag of a version made champion: the version it replaced ("" for the first champion)."""
ROLLED_BACK = "rolled_back"
"""Tag of a champion that a roll back replaced: when and by which version."""


class RegistryError(ValueError):
    """A registry change or look-up that cannot be made, with a sentence that says why and what would do it."""


@dataclass
class Promotion:
    """Whether a challenger became champion, why, and the figures the decision was made on."""

    name: str
    version: str
    promoted: bool
    """Whether the version became champion."""
    reason: str
    metric: str = ""
    challenger_score: float = float("nan")
    champion_version: str | None = None
    champion_score: float | None = None
    champion_scored: str = ""
    window: dict[str, str] = field(default_factory=dict)
    wins: bool = False
    """Whether the version beats the champion (or there is none): it becomes champion unless the promotion was
    not applied (`promote(..., apply=False)`)."""

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
    _predictions: dict[str, tuple[np.ndarray, bool, str]] = field(default_factory=dict, init=False, repr=False)

    @property
    def label(self) -> np.ndarray:
        return self.data.label[self.data.valid]

    @property
    def weight(self) -> np.ndarray | None:
        return None if self.data.weight is None else self.data.weight[self.data.valid]

    def window(self, rows: np.ndarray) -> dict[str, str]:
        times = self.data.times[self.data.valid][rows]
        return {
            "start": str(self.data.cut),
            "end": str(times.max()),
            "rows": str(int(rows.sum())),
            "positives": str(int(self.label[rows].sum())),
        }

    def remember(self, run_id: str, prediction: np.ndarray) -> None:
        """Keep the prediction on the window of the run trained on this very training set, made by its booster
        fit on the rows before the window (training's own held-out fit), so that comparing it needs no refit."""
        self._predictions[run_id] = (prediction, True, _minute(self.data.times.max()))

    def champion_prediction(
        self, client: MlflowClient, name: str, version: str, booster: lgb.Booster
    ) -> tuple[np.ndarray, str]:
        """Predictions on the window by the champion without the window's rows, and how they were made."""
        return self.version_prediction(client, name, version, booster, role="champion")

    def version_prediction(
        self, client: MlflowClient, name: str, version: str, booster: lgb.Booster, role: str
    ) -> tuple[np.ndarray, str]:
        """Predictions on the window by a registered version without the window's rows, as the champion's are
        made, and how they were made (a sentence about the version, called by its `role`)."""
        run_id, trained_until = _trained_until(client, name, version)
        if run_id not in self._predictions:
            self._predictions[run_id] = self._predict_without_window(booster, trained_until)
        prediction, refit, until = self._predictions[run_id]
        if not refit:
            return prediction, f"{role} scored as registered (fit on rows up to {until}, before the window)"
        like = " like the challenger's" if role == "champion" else ""
        return prediction, (
            f"{role}'s parameters and features refit on the rows before {_minute(self.data.cut)}{like} "
            f"(its registered booster saw rows up to {until}, inside the window)"
        )

    def _predict_without_window(
        self, booster: lgb.Booster, trained_until: pd.Timestamp | None
    ) -> tuple[np.ndarray, bool, str]:
        """The predictions, whether the booster's recipe was refit, and when its training rows ended."""
        columns = booster.feature_name()
        missing = [c for c in columns if c not in self.data.design.columns]
        if missing:
            raise ValueError(f"features missing: {missing[:5]}")
        until = "an unknown time" if trained_until is None else _minute(trained_until)
        if trained_until is not None and trained_until < self.data.cut:
            return np.asarray(booster.predict(self.data.design.loc[self.data.valid, columns])), False, until
        return refit_held_out(self.data, booster), True, until


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    challenger_prediction: np.ndarray,
    held_out: HeldOut,
    metric: str,
    rows: np.ndarray | None = None,
    apply: bool = True,
    erased_since: datetime | None = None,
) -> Promotion:
    """Make `version` champion if there is none, or if it beats the champion on the same held-out window, or if
    the champion was registered before `erased_since` (the latest erasure: it learned from customers who have
    since been erased, and a model trained without them replaces it whatever the scores; README, Privacy).

    `challenger_prediction` is the challenger's held-out booster's prediction on every row of the window;
    `rows` picks the rows the metric (AUC) is taken over (default: all). A tie does not promote. Without
    `apply`, the decision is made and recorded but `version` stays challenger, for a person to compare and
    promote (`training.compare`).
    """
    rows = np.ones(len(held_out.label), dtype=bool) if rows is None else rows
    label = held_out.label[rows]
    window = held_out.window(rows)
    where = window_text(window)
    challenger_score = auc(label, challenger_prediction[rows])
    client.set_registered_model_alias(name, "challenger", version)
    current = champion(client, name)
    decision = Promotion(name, version, True, "", metric, challenger_score, window=window, wins=True)
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
        decision.wins = bool(np.isnan(decision.champion_score) or challenger_score > decision.champion_score)
        verdict = "beats" if decision.wins else "does not beat"
        tie = " (a tie keeps the champion)" if challenger_score == decision.champion_score else ""
        decision.reason = (
            f"challenger v{version} {metric} {challenger_score:.4f} {verdict} champion v{decision.champion_version} "
            f"{decision.champion_score:.4f} ({challenger_score - decision.champion_score:+.4f}){tie} on {where}; "
            f"{decision.champion_scored}"
        )
        if erased_since is not None and _registered_before(client, name, decision.champion_version, erased_since):
            decision.wins = True
            decision.reason = (
                f"champion v{decision.champion_version} was trained before customers were erased: challenger "
                f"v{version}, trained without them, replaces it whatever the scores; " + decision.reason
            )
    decision.promoted = decision.wins and apply
    if decision.wins and not apply:
        decision.reason += "; left as challenger: promotion was not applied"
    if decision.promoted:
        make_champion(client, name, version, decision.reason)
    else:
        client.set_model_version_tag(name, version, "promotion", decision.reason)
    return decision


def _registered_before(client: MlflowClient, name: str, version: str, when: datetime) -> bool:
    """Whether `version` of `name` was registered before `when`."""
    created = client.get_model_version(name, version).creation_timestamp
    return created is not None and created < when.timestamp() * 1000


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version `alias` points to, or None where the model or the alias does not exist."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def make_champion(client: MlflowClient, name: str, version: str, reason: str) -> str | None:
    """Point `name`'s champion alias at `version`, keeping the reason and the version it replaces (returned;
    None for the first champion). A challenger alias on `version` is removed."""
    current = alias_version(client, name, "champion")
    if current == version:
        return current
    client.set_registered_model_alias(name, "champion", version)
    client.set_model_version_tag(name, version, PREVIOUS_CHAMPION, current or "")
    client.set_model_version_tag(name, version, "promotion", reason)
    if alias_version(client, name, "challenger") == version:
        client.delete_registered_model_alias(name, "challenger")
    return current


def previous_champion(client: MlflowClient, name: str, version: str | None = None) -> str | None:
    """The version that was champion before `version` (default: the champion) became champion; None if none.

    Read from the version's `previous_champion` tag; a version made champion before that tag existed falls
    back to the newest earlier version whose training run promoted it.
    """
    version = version or alias_version(client, name, "champion")
    if version is None:
        return None
    tags = client.get_model_version(name, version).tags
    if PREVIOUS_CHAMPION in tags:
        return tags[PREVIOUS_CHAMPION] or None
    earlier = [v for v in client.search_model_versions(f"name='{name}'") if int(v.version) < int(version)]
    for found in sorted(earlier, key=lambda v: int(v.version), reverse=True):
        if found.run_id and client.get_run(found.run_id).data.tags.get(f"promoted.{name}") == "true":
            return str(found.version)
    return None


@dataclass(frozen=True)
class Rollback:
    """A champion put back: the version that served, the one that serves again, and why."""

    name: str
    from_version: str
    to_version: str
    reason: str


def roll_back(client: MlflowClient, name: str, why: str = "") -> Rollback:
    """Make the previous champion of `name` champion again; the replaced version keeps a `rolled_back` tag.

    Rolling back again goes one champion further back. A `RegistryError` says why where there is no champion
    or none before it. Serving reads champions at start: restart `sendwise serve` after.
    """
    current = alias_version(client, name, "champion")
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back: `sendwise pipeline --data DATA_DIR` trains one")
    target = previous_champion(client, name, current)
    if target is None:
        raise RegistryError(f"{name} v{current} was the first champion: there is no earlier champion to roll back to")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    reason = f"rolled back on {when}: v{target} is champion again in place of v{current}" + (f" ({why})" if why else "")
    client.set_registered_model_alias(name, "champion", target)
    client.set_model_version_tag(name, current, ROLLED_BACK, reason)
    return Rollback(name, current, target, reason)


VERSION_COLUMNS = [
    "version",
    "aliases",
    "registered",
    "data_end",
    "valid_auc",
    "tuned",
    "promotion",
    "previous_champion",
    "rolled_back",
    "run_id",
]


def list_versions(client: MlflowClient, name: str) -> pd.DataFrame:
    """Every registered version of `name`, newest first: its aliases, when it was registered, the data it was
    trained on, its held-out AUC, whether it was tuned, and what promotion and roll back said of it."""
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:  # no such model yet
        aliases = {}
    rows = []
    for found in client.search_model_versions(f"name='{name}'"):
        run = client.get_run(found.run_id) if found.run_id else None
        params = run.data.params if run else {}
        metrics = run.data.metrics if run else {}
        rows.append(
            {
                "version": str(found.version),
                "aliases": ", ".join(sorted(a for a, v in aliases.items() if str(v) == str(found.version))),
                "registered": pd.Timestamp(found.creation_timestamp, unit="ms", tz="UTC"),
                "data_end": params.get("data_end", ""),
                "valid_auc": metrics.get("valid_auc", float("nan")),
                "tuned": run.data.tags.get("tuned", "") if run else "",
                "promotion": found.tags.get("promotion", ""),
                "previous_champion": found.tags.get(PREVIOUS_CHAMPION, ""),
                "rolled_back": found.tags.get(ROLLED_BACK, ""),
                "run_id": found.run_id or "",
            }
        )
    frame = pd.DataFrame(rows, columns=VERSION_COLUMNS)
    return frame.sort_values("version", key=lambda v: v.astype(int), ascending=False).reset_index(drop=True)


def window_text(window: dict[str, str]) -> str:
    """`the held-out window 2026-10-19 14:06 UTC to 2026-10-28 23:33 UTC (5411 rows)`, from `HeldOut.window`."""
    return f"the held-out window {_minute(window['start'])} to {_minute(window['end'])} ({window['rows']} rows)"


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
