"""Samples of the training sets, kept in the home beside the models they trained, for the marketer reports.

`sendwise report` explains each champion on rows like those it learned from. Rather than rebuild the feature
tables and the training sets to find such rows, training keeps a seeded sample of each run's design matrix
(features only: no customer ids, no labels) as `SENDWISE_HOME/training_sets/<run id>.parquet`, and drops the
samples of runs that no longer serve as champion or challenger, so that a retrained home keeps no rows of
customers it has since forgotten beyond those of the models that still serve.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sendwise.raw import write_parquet_atomic
from sendwise.settings import Settings
from training.registry import MODEL_NAMES

SAMPLE_ROWS = 2000
ALIASES = ("champion", "challenger")


def sample_path(settings: Settings, run_id: str) -> Path:
    return settings.training_sets_dir / f"{run_id}.parquet"


def save_sample(settings: Settings, run_id: str, design: pd.DataFrame) -> Path:
    """A seeded sample of at most `SAMPLE_ROWS` rows of `design`, kept under the run that trained on it."""
    rng = np.random.default_rng(settings.seed)
    rows = rng.choice(len(design), size=min(SAMPLE_ROWS, len(design)), replace=False)
    path = sample_path(settings, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(design.iloc[rows].reset_index(drop=True), path)
    return path


def load_sample(settings: Settings, run_id: str) -> pd.DataFrame | None:
    """The sample kept for `run_id`, or None where that run kept none."""
    path = sample_path(settings, run_id)
    return pd.read_parquet(path) if path.exists() else None


def serving_runs(client: MlflowClient) -> set[str]:
    """The runs behind every champion and challenger of the registered models."""
    runs = set()
    for name in MODEL_NAMES:
        for alias in ALIASES:
            try:
                version = client.get_model_version_by_alias(name, alias)
            except MlflowException:  # no such model or alias yet
                continue
            if version.run_id:
                runs.add(version.run_id)
    return runs


def keep_only(settings: Settings, run_ids: set[str]) -> None:
    """Remove the samples of every run not in `run_ids`."""
    if not settings.training_sets_dir.is_dir():
        return
    for path in settings.training_sets_dir.glob("*.parquet"):
        if path.stem not in run_ids:
            path.unlink()
