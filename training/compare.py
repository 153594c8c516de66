"""Two registered versions of one model side by side on the same held-out window, with the figures behind it.

Training decides a promotion on one number (`training.registry.promote`). A data scientist who retrains from a
notebook wants the comparison itself: any two versions (by default the `challenger` and the `champion`)
scored on the later part of the current training set, each without having been fit on a row of it (a version
trained on rows of the window has its recipe refit on the rows before it, exactly as promotion does), on the
metric and rows promotion uses, with ROC curves, reliability curves and the metrics as bars. `promote_if_better`
then applies the same rule promotion applies: the challenger becomes champion only if it beats the champion.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from sklearn.metrics import roc_curve

from sendwise.settings import Settings
from training import skips
from training.datasets import offer_training_set, open_training_set
from training.jobs import Features
from training.models import auc, logloss, mean
from training.registry import (
    MODEL_NAMES,
    HeldOut,
    Promotion,
    RegistryError,
    alias_version,
    make_champion,
    window_text,
)
from training.train import TrainResult, promotion_criterion

RELIABILITY_BINS = 10
COLOURS = {"challenger": "#c05621", "champion": "#2b6cb0"}


@dataclass
class Window:
    """The held-out window one model's versions are compared on: the rows and metric promotion uses."""

    name: str
    held_out: HeldOut
    metric: str
    rows: np.ndarray = field(repr=False)
    """Which held-out rows the metric is taken over (all but the most common hour's for `send_time`)."""

    @classmethod
    def of(cls, name: str, held_out: HeldOut) -> Window:
        """`name`'s window in `held_out`, on the rows promotion takes its metric over."""
        metric, rows = promotion_criterion(name, held_out.data)
        return cls(name, held_out, metric, np.ones(len(held_out.label), dtype=bool) if rows is None else rows)

    @property
    def label(self) -> np.ndarray:
        return self.held_out.label[self.rows]

    @property
    def weight(self) -> np.ndarray | None:
        """What each row stands for where the training set is a sample (`datasets.sample_rows`), else None."""
        weight = self.held_out.weight
        return None if weight is None else weight[self.rows]

    def describe(self) -> dict[str, str]:
        return self.held_out.window(self.rows)


def held_out_windows(settings: Settings, features: Features, names: Iterable[str]) -> dict[str, Window]:
    """The held-out window of each model in `names`, from its training set as the home's features make it now
    (`jobs.build_features`). `open_propensity` and `send_time` share one training set, and so the refits of the
    versions they share. A `RegistryError` says why where the data trains no such model.
    """
    windows: dict[str, Window] = {}
    open_held_out: HeldOut | None = None
    for name in names:
        if name not in MODEL_NAMES:
            raise RegistryError(f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
        if name == "next_best_offer":
            found = offer_training_set(
                features.store, features.tables, settings.conversion_window_days, settings.train_max_rows
            )
            if found is None:
                raise RegistryError(f"no held-out window for {name}: {skips.offer_model(features.tables, settings)}")
            held_out = HeldOut(found[0])
        else:
            if open_held_out is None:
                data = open_training_set(
                    features.store, features.tables, settings.label_window_hours, settings.train_max_rows
                )
                if data is None:
                    raise RegistryError(f"no held-out window for {name}: {skips.open_model(features.tables, settings)}")
                open_held_out = HeldOut(data)
            held_out = open_held_out
        windows[name] = Window.of(name, held_out)
    return windows


def training_windows(result: TrainResult) -> dict[str, Window]:
    """The windows a training that left promotion to a person (`TrainOptions(promote=False)`) decided on, with
    the predictions it already made there: the new version's and the champion's need no refit."""
    if not result.held_out and result.promotions:
        raise RegistryError(
            "this training promoted by itself and kept no held-out windows: train with "
            "`TrainOptions(promote=False)`, or build the windows again with `held_out_windows`"
        )
    return {name: Window.of(name, held_out) for name, held_out in result.held_out.items()}


@dataclass
class Scored:
    """One version's predictions on the window's rows, and how they were made."""

    role: str
    version: str
    prediction: np.ndarray | None = field(repr=False)
    """None where the version could not score the window (`how` says why)."""
    how: str

    def metrics(self, label: np.ndarray, weight: np.ndarray | None = None) -> dict[str, float]:
        """AUC (the metric promotion decides on), log loss, Brier score and calibration (mean predicted over
        the observed rate), weighted where the window's rows are a sample; NaN where the version could not
        score."""
        if self.prediction is None:
            return {"AUC": float("nan"), "log loss": float("nan"), "Brier": float("nan"), "calibration": float("nan")}
        p = self.prediction
        return {
            "AUC": auc(label, p),
            "log loss": logloss(label, p, weight),
            "Brier": mean((p - label) ** 2, weight),
            "calibration": mean(p, weight) / max(mean(label, weight), 1e-9),
        }


@dataclass
class Comparison:
    """A challenger and a champion (None: the model has none) of one model, scored on one held-out window."""

    name: str
    metric: str
    window: dict[str, str]
    label: np.ndarray = field(repr=False)
    challenger: Scored
    champion: Scored | None
    weight: np.ndarray | None = field(default=None, repr=False)

    @property
    def challenger_score(self) -> float:
        return self.challenger.metrics(self.label)["AUC"]

    @property
    def champion_score(self) -> float | None:
        return None if self.champion is None else self.champion.metrics(self.label)["AUC"]

    @property
    def challenger_wins(self) -> bool:
        """Promotion's rule: no champion, a champion that cannot score, or a strictly higher AUC (a tie keeps
        the champion)."""
        champion = self.champion_score
        return champion is None or bool(np.isnan(champion)) or self.challenger_score > champion

    def table(self) -> pd.DataFrame:
        """One row per version: its role, the metrics on the window, and how its predictions were made."""
        sides = [s for s in (self.challenger, self.champion) if s is not None]
        rows = [
            {"role": s.role, "version": s.version, **s.metrics(self.label, self.weight), "scored": s.how} for s in sides
        ]
        return pd.DataFrame(rows).set_index("role")

    def verdict(self) -> str:
        """The decision in promotion's words: which version wins, by how much, on which window."""
        where = window_text(self.window)
        challenger = f"challenger v{self.challenger.version} {self.metric} {self.challenger_score:.4f}"
        if self.champion is None:
            return f"{challenger} on {where}; {self.name} has no champion: the challenger wins"
        champion_score = self.champion_score
        assert champion_score is not None
        verb = "beats" if self.challenger_wins else "does not beat"
        tie = " (a tie keeps the champion)" if self.challenger_score == champion_score else ""
        return (
            f"{challenger} {verb} champion v{self.champion.version} {champion_score:.4f} "
            f"({self.challenger_score - champion_score:+.4f}){tie} on {where}; {self.champion.how}"
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: the window, the metric, the verdict and each version's metrics (NaN as null)."""
        table = self.table().drop(columns="scored")
        versions = {
            role: {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for role, row in table.to_dict(orient="index").items()
        }
        return {
            "name": self.name,
            "metric": self.metric,
            "window": self.window,
            "challenger_wins": self.challenger_wins,
            "verdict": self.verdict(),
            "versions": versions,
        }


def _resolve(client: MlflowClient, name: str, version_or_alias: str) -> str | None:
    """A version number as given, or the version an alias points to (None where the alias is not set)."""
    if version_or_alias.isdigit():
        client.get_model_version(name, version_or_alias)  # an MlflowException naming it where it does not exist
        return version_or_alias
    return alias_version(client, name, version_or_alias)


def _score(client: MlflowClient, window: Window, role: str, version: str) -> Scored:
    booster = mlflow.lightgbm.load_model(f"models:/{window.name}/{version}")
    try:
        prediction, how = window.held_out.version_prediction(client, window.name, version, booster, role)
    except ValueError as error:  # a version whose features the current data no longer has
        return Scored(role, version, None, f"{role} could not score the window: {error}")
    return Scored(role, version, prediction[window.rows], how)


def compare_versions(
    client: MlflowClient, window: Window, challenger: str = "challenger", champion: str = "champion"
) -> Comparison:
    """Score two versions of `window.name` (version numbers or aliases) on the window, as promotion does.

    A `RegistryError` says so where the challenger does not exist; a missing champion is a comparison
    against none (the challenger wins).
    """
    name = window.name
    challenger_version = _resolve(client, name, challenger)
    if challenger_version is None:
        raise RegistryError(
            f"{name} has no {challenger}: train one with `jobs.train(settings, TrainOptions(promote=False))`"
        )
    champion_version = _resolve(client, name, champion)
    if champion_version == challenger_version:
        raise RegistryError(f"{name} v{challenger_version} is both {challenger} and {champion}: name another version")
    return Comparison(
        name=name,
        metric=window.metric,
        window=window.describe(),
        label=window.label,
        challenger=_score(client, window, "challenger", challenger_version),
        champion=None if champion_version is None else _score(client, window, "champion", champion_version),
        weight=window.weight,
    )


def summary(comparisons: Iterable[Comparison]) -> pd.DataFrame:
    """One row per model: the metric, each version's score on it, the difference and whether the challenger
    wins."""
    rows = []
    for comparison in comparisons:
        champion = comparison.champion_score
        rows.append(
            {
                "model": comparison.name,
                "metric": comparison.metric,
                "rows": int(comparison.window["rows"]),
                "challenger": comparison.challenger.version,
                "challenger score": comparison.challenger_score,
                "champion": None if comparison.champion is None else comparison.champion.version,
                "champion score": champion,
                "difference": None if champion is None else comparison.challenger_score - champion,
                "challenger wins": comparison.challenger_wins,
            }
        )
    return pd.DataFrame(rows).set_index("model")


def reliability_table(
    prediction: np.ndarray, label: np.ndarray, bins: int = RELIABILITY_BINS, weight: np.ndarray | None = None
) -> pd.DataFrame:
    """Mean predicted probability and observed rate per decile of the prediction (a reliability curve),
    weighted where the rows are a sample."""
    w = np.ones(len(label)) if weight is None else np.asarray(weight, dtype=np.float64)
    frame = pd.DataFrame({"predicted": prediction * w, "observed": label * w, "weight": w})
    frame["bin"] = pd.qcut(pd.Series(prediction).rank(method="first"), bins, labels=False)
    sums = frame.groupby("bin")[["predicted", "observed", "weight"]].sum()
    table = pd.DataFrame(
        {"predicted": sums["predicted"] / sums["weight"], "observed": sums["observed"] / sums["weight"]}
    )
    return table.assign(rows=frame.groupby("bin").size()).reset_index(drop=True)


def plot_comparison(comparison: Comparison) -> Figure:
    """ROC curves, reliability curves and the metrics as bars, the challenger beside the champion."""
    figure = Figure(figsize=(15, 4.6), layout="constrained")
    roc_axis, reliability_axis, bars_axis = figure.subplots(1, 3)
    sides = [s for s in (comparison.challenger, comparison.champion) if s is not None and s.prediction is not None]
    label = comparison.label
    for side in sides:
        assert side.prediction is not None
        colour, tag = COLOURS[side.role], f"{side.role} v{side.version}"
        fpr, tpr, _ = roc_curve(label, side.prediction)
        roc_axis.plot(fpr, tpr, color=colour, label=f"{tag} (AUC {auc(label, side.prediction):.4f})")
        table = reliability_table(side.prediction, label, weight=comparison.weight)
        reliability_axis.plot(table["predicted"], table["observed"], marker="o", color=colour, label=tag)
    roc_axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    roc_axis.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {comparison.metric}")
    roc_axis.legend(loc="lower right")
    top = max([float(label.mean()) * 2, *(float(s.prediction.max()) for s in sides if s.prediction is not None)])
    reliability_axis.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="calibrated")
    reliability_axis.set(
        xlabel="mean predicted probability", ylabel="observed rate", title="Reliability (deciles of the prediction)"
    )
    reliability_axis.legend(loc="upper left")
    table = comparison.table()
    metrics = table.drop(columns=["version", "scored"])
    positions = np.arange(len(metrics.columns))
    width = 0.8 / len(metrics)
    for k, (role, row) in enumerate(metrics.iterrows()):
        bars = bars_axis.bar(
            positions + k * width,
            row.to_numpy(dtype=float),
            width,
            color=COLOURS[str(role)],
            label=f"{role} v{table.loc[role, 'version']}",
        )
        bars_axis.bar_label(bars, fmt="%.3f", fontsize=8)
    bars_axis.set_xticks(positions + width * (len(metrics) - 1) / 2, list(metrics.columns))
    bars_axis.set_ylim(0, 1.3 * float(np.nanmax(metrics.to_numpy(dtype=float))))
    bars_axis.set_title("Metrics on the window (AUC decides)")
    bars_axis.legend(loc="upper left")
    figure.suptitle(f"{comparison.name}: {window_text(comparison.window)}")
    return figure


def log_comparison(client: MlflowClient, comparison: Comparison) -> str:
    """Keep the comparison with the challenger's MLflow run: `comparisons/<name>_v<a>_vs_v<b>.json` and `.png`.

    Returns the artifact path of the JSON file.
    """
    version = client.get_model_version(comparison.name, comparison.challenger.version)
    if not version.run_id:
        raise RegistryError(f"{comparison.name} v{comparison.challenger.version} has no run to keep the comparison")
    against = f"v{comparison.champion.version}" if comparison.champion else "none"
    stem = f"{comparison.name}_v{comparison.challenger.version}_vs_{against}"
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        (folder / f"{stem}.json").write_text(json.dumps(comparison.to_dict(), indent=2))
        plot_comparison(comparison).savefig(folder / f"{stem}.png", dpi=100)
        client.log_artifacts(version.run_id, directory, artifact_path="comparisons")
    return f"comparisons/{stem}.json"


def promote_if_better(client: MlflowClient, comparison: Comparison) -> Promotion:
    """Make the challenger champion if it beats the champion in `comparison` (promotion's rule); either way
    the decision is kept with the version and its run, as training keeps it."""
    champion = comparison.champion
    decision = Promotion(
        name=comparison.name,
        version=comparison.challenger.version,
        promoted=comparison.challenger_wins,
        reason=comparison.verdict(),
        metric=comparison.metric,
        challenger_score=comparison.challenger_score,
        champion_version=None if champion is None else champion.version,
        champion_score=comparison.champion_score,
        champion_scored="" if champion is None else champion.how,
        window=comparison.window,
        wins=comparison.challenger_wins,
    )
    if decision.promoted:
        make_champion(client, decision.name, decision.version, decision.reason)
    else:
        client.set_model_version_tag(decision.name, decision.version, "promotion", decision.reason)
    run_id = client.get_model_version(decision.name, decision.version).run_id
    if run_id:
        client.set_tag(run_id, f"promotion.{decision.name}", decision.reason)
        client.set_tag(run_id, f"promoted.{decision.name}", str(decision.promoted).lower())
    return decision
