"""What every real-data report shares: the pipeline run, the splits, scoring every offer as the engine does,
policy values with their intervals, and the formatting of the figures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from feast import FeatureStore
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from features.build import FeatureTables
from features.transform import OfferMatrix, customer_matrix, offer_design
from sendwise.ingest import IngestReport
from sendwise.settings import Settings
from serving.offers import rank_offers as engine_ranking
from training import jobs, offpolicy
from training.datasets import VALID_SHARE, TrainingSet, closed_exposures, historical_features, offer_training_set

FEATURE_SERVICE = "next_best_offer_v1"
# As training.train.train_offer, on one thread: on a shared two-core machine, LightGBM's OpenMP threads spin
# while the other core is busy, and two threads ran 60 times slower than one (measured: 0.35 s vs 6 ms a round).
THREADS = 1
OFFER_MODEL_PARAMS: dict[str, object] = {"min_data_in_leaf": 50, "num_threads": THREADS}
UPLIFT_SHARE = 0.3
LEVEL = 0.95


class RealDataError(RuntimeError):
    """The dataset cannot give the report (missing file, or the pipeline built no offer training set)."""


# --- the pipeline, as `sendwise pipeline` runs it (training.jobs) -------------------------------------------
@dataclass
class PipelineRun:
    """A dataset ingested, its features built and registered, and the offer model's training set."""

    settings: Settings
    tables: FeatureTables
    store: FeatureStore
    data: TrainingSet
    exposures: pd.DataFrame  # the rows of `data`, in order: customer_id, offer_id, exposed_at, propensity, ...
    offers: pd.DataFrame  # the raw offers table, in action order
    ingest_report: IngestReport


class _RandomSplit(TrainingSet):
    """A training set whose held-out rows are a seeded random share (all rows share one time)."""

    def __init__(self, base: TrainingSet, valid_mask: np.ndarray) -> None:
        super().__init__(**{f.name: getattr(base, f.name) for f in fields(base)})
        self.valid_mask = valid_mask

    @property
    def train(self) -> np.ndarray:
        return ~self.valid_mask

    @property
    def valid(self) -> np.ndarray:
        return self.valid_mask


def run_pipeline(data_dir: Path, home: Path, as_of: pd.Timestamp | None = None, **settings: Any) -> PipelineRun:
    """Ingest `data_dir` into `home`, build the feature tables and apply Feast over them (the jobs of `sendwise
    pipeline`), and take the offer model's training set through its FeatureService."""
    settings_ = Settings(home=home, **settings)
    report = jobs.ingest(settings_, data_dir, progress=False)
    features = jobs.build_features(settings_, as_of=as_of, progress=False)
    tables, store = features.tables, features.store
    found = offer_training_set(store, tables, settings_.conversion_window_days)
    if found is None:
        raise RealDataError(f"{data_dir}: the pipeline built no offer training set (too few closed exposures)")
    data, _ = found
    exposures = closed_exposures(tables, settings_.conversion_window_days)
    aligned = len(exposures) == len(data.label) and (
        (exposures["exposed_at"].to_numpy() == data.times.to_numpy()).all()
        and (exposures["converted"].to_numpy(dtype=np.float32) == data.label).all()
    )
    if not aligned:
        raise RealDataError("the exposures do not line up with the offer training set's rows")
    offers = tables.offers.sort_values("offer_id").reset_index(drop=True)
    return PipelineRun(settings_, tables, store, data, exposures, offers, report)


def ingest_facts(report: IngestReport) -> dict[str, Any]:
    """Rows read, accepted and quarantined per table, and where the customers' time zones came from."""
    return {
        "tables": {
            name: {"read": t.rows_read, "accepted": t.accepted, "quarantined": t.quarantined}
            for name, t in report.tables.items()
        },
        "timezones": report.timezones.model_dump(),
        "warnings": list(report.warnings),
    }


def subset(data: TrainingSet, rows: np.ndarray, seed: int, label: np.ndarray | None = None) -> TrainingSet:
    """The training set restricted to `rows` (optionally with another label), held-out part included.

    Where the rows span several times, the last `VALID_SHARE` by time is held out, as in the pipeline; where
    they all share one time, a seeded random `VALID_SHARE` is.
    """
    times = data.times.iloc[rows].reset_index(drop=True)
    base = TrainingSet(
        design=data.design.iloc[rows].reset_index(drop=True),
        label=(data.label if label is None else np.asarray(label, dtype=np.float32))[rows],
        times=times,
        cut=times.quantile(1 - VALID_SHARE),
        feature_service=data.feature_service,
        weight=None if data.weight is None else data.weight[rows],
    )
    if times.nunique() > 1 and base.train.any() and base.valid.any():
        return base
    valid = np.random.default_rng(seed).random(len(rows)) < VALID_SHARE
    return _RandomSplit(base, valid)


def score_offers(
    run: PipelineRun, units: pd.DataFrame, boosters: dict[str, lgb.Booster]
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Each booster's prediction for every (unit, offer): [units, offers] matrices, offers in `run.offers` order.

    `units` has `customer_id`, `offer_id` (the logged one) and `event_timestamp`; the customer's features come
    from Feast at that time, the offers' from Feast at the end of the data, and `offer_design` pairs them, as
    the engine does when it serves. Also returns the logged pairs' design rows, for checks.
    """
    rows = historical_features(run.store, FEATURE_SERVICE, units[["customer_id", "offer_id", "event_timestamp"]])
    matrix = customer_matrix(rows)
    offer_ids = run.offers["offer_id"].to_numpy()
    offer_rows = historical_features(
        run.store,
        FEATURE_SERVICE,
        pd.DataFrame(
            {
                "customer_id": units["customer_id"].iloc[0],
                "offer_id": offer_ids,
                "event_timestamp": run.tables.as_of,
            }
        ),
    )
    offers = OfferMatrix.from_rows(offer_rows)
    n, k = len(matrix), len(offers)
    at = pd.Series(np.repeat(units["event_timestamp"].to_numpy(), k))  # the latest values as they were then
    design = offer_design(matrix, np.repeat(np.arange(n), k), offers, np.tile(np.arange(k), n), at)
    scores = {
        name: np.asarray(booster.predict(design[booster.feature_name()], num_threads=THREADS)).reshape(n, k)
        for name, booster in boosters.items()
    }
    logged = pd.Series(units["offer_id"].to_numpy()).map({o: j for j, o in enumerate(offer_ids)}).to_numpy()
    return scores, design.iloc[np.arange(n) * k + logged].reset_index(drop=True)


def serving_gap(booster: lgb.Booster, data: TrainingSet, rows: np.ndarray, served: pd.DataFrame) -> float:
    """Largest gap between predictions from the training set's design and from the serving path's, same pairs."""
    columns = booster.feature_name()
    trained = np.asarray(booster.predict(data.design.iloc[rows][columns], num_threads=THREADS))
    return float(np.max(np.abs(trained - np.asarray(booster.predict(served[columns], num_threads=THREADS)))))


def rank_offers(value: np.ndarray, control: int | None) -> np.ndarray:
    """The engine's choice per unit (`serving.offers.rank_offers`, as `/v1/decide` ranks): the offer of highest
    value over the control arm's where there is one (the control itself among the candidates, so it is chosen
    where no offer adds value), else of highest value."""
    arms = np.zeros(0, dtype=np.int64) if control is None else np.array([control])
    order, _ = engine_ranking(value, arms, np.zeros(value.shape[1], dtype=object), np.zeros(value.shape[1]), False)
    return np.asarray(order[:, 0])


# --- policies, intervals and progress -----------------------------------------------------------------------
@contextmanager
def steps(title: str, total: int, enabled: bool) -> Iterator[Any]:
    """A progress bar over the named steps of a report."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    )
    with progress:
        task = progress.add_task(title, total=total)
        calls = 0

        def step(description: str) -> None:
            nonlocal calls
            progress.update(task, description=f"{title}: {description}", completed=calls)
            calls += 1

        yield step
        progress.update(task, completed=total)


def estimates(values: dict[str, offpolicy.PolicyValue]) -> dict[str, dict[str, Any]]:
    return {name: value.as_dict() for name, value in values.items()}


def policy_shares(choice: np.ndarray, offer_ids: np.ndarray) -> dict[str, float]:
    counts = np.bincount(choice, minlength=len(offer_ids)) / max(len(choice), 1)
    return {str(o): float(c) for o, c in zip(offer_ids, counts, strict=True)}


def uniform_policy(n: int, k: int) -> np.ndarray:
    return np.full((n, k), 1.0 / k)


def uplift_at_k(
    outcome: np.ndarray, treated: np.ndarray, uplift: np.ndarray, share: float = UPLIFT_SHARE, level: float = LEVEL
) -> dict[str, float]:
    """Treated minus control outcome rate among the `share` of units ranked highest by predicted uplift.

    The interval is the normal one for a difference of two independent means, given the ranking.
    """
    n_top = int(len(uplift) * share)
    top = np.argsort(-uplift, kind="stable")[:n_top]
    y, t = outcome[top].astype(float), treated[top].astype(bool)
    treated_rate, control_rate = float(y[t].mean()), float(y[~t].mean())
    value = treated_rate - control_rate
    se = float(np.sqrt(y[t].var(ddof=1) / t.sum() + y[~t].var(ddof=1) / (~t).sum()))
    z = offpolicy.z_score(level)
    return {
        "value": value,
        "low": value - z * se,
        "high": value + z * se,
        "std_error": se,
        "treated_rate": treated_rate,
        "control_rate": control_rate,
        "n_top": n_top,
        "n_treated_top": int(t.sum()),
        "n_control_top": int((~t).sum()),
        "overall_uplift": float(outcome[treated.astype(bool)].mean() - outcome[~treated.astype(bool)].mean()),
    }


# --- figures as text ----------------------------------------------------------------------------------------
def ci(value: dict[str, Any], digits: int = 4, scale: float = 1.0, prefix: str = "") -> str:
    """`value [low, high]` of an estimate with its interval."""
    v, lo, hi = (value[key] * scale for key in ("value", "low", "high"))
    return f"{prefix}{v:.{digits}f} [{prefix}{lo:.{digits}f}, {prefix}{hi:.{digits}f}]"


def signed(value: dict[str, Any], digits: int = 2, scale: float = 100.0, unit: str = " pp") -> str:
    """`+value unit [+low, +high]` of a difference with its interval."""
    v, lo, hi = (value[key] * scale for key in ("value", "low", "high"))
    return f"{v:+.{digits}f}{unit} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
