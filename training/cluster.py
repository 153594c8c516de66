"""Training on a Dask cluster (`SENDWISE_DASK_SCHEDULER`): the same boosters, fit by LightGBM's Dask estimators.

The training set is cut into one partition per worker (dask.dataframe) and each worker trains on the rows it
holds, LightGBM's data-parallel learner syncing the histograms between them. What comes back is a plain
`lightgbm.Booster` (`DaskLGBMClassifier.booster_`), so logging, registry, promotion, explanations and serving do
not know where it was fit.

LightGBM's Dask estimators have no early stopping (each worker would stop on its own rows' metric). The held-out
fit stops the way `lgb.early_stopping` does, by a loop of its own: it fits `CHUNK_ROUNDS` rounds at a time, each
chunk continuing the booster so far (`init_model`), scores the later part of the training set tree by tree after
each chunk, and stops once the best round is `EARLY_STOPPING` rounds behind. The final fit on every row then
runs that many rounds, as in process. Tuning (Optuna) and the refit of a champion's recipe at promotion stay in
process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask.dataframe as dd
import lightgbm as lgb
import numpy as np
from distributed import Client, LocalCluster
from sklearn.metrics import roc_auc_score

from sendwise.settings import Settings
from training.datasets import TrainingSet
from training.models import EARLY_STOPPING, IN_PROCESS, MAX_ROUNDS, Fitter, HeldOutFit

CHUNK_ROUNDS = 100
"""Rounds fit per Dask job of the held-out loop: each job costs a second or so of setting up the workers'
network, and a stop overshoots the best round by at most this many rounds (the trees are kept, unused)."""
UNSUPPORTED = ("interaction_constraints",)
"""Parameters left out on Dask: LightGBM 4.7's distributed learners fail on interaction constraints
(std::bad_alloc at the first round). The open model then lets its hour features interact with the others, so
serving's hour table (`serving.curves`) no longer matches its trees and the service scores every hour instead:
the same predictions, more work per decision."""
CONNECT_TIMEOUT_S = 30.0
LABEL = "__sendwise_label__"
WEIGHT = "__sendwise_weight__"


class DaskSchedulerError(Exception):
    """`SENDWISE_DASK_SCHEDULER` names a scheduler that cannot train: none answers, or it has no workers."""


Loss = Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]
"""A held-out loss of (label, probability, weight): lower is better."""


def _negative_auc(label: np.ndarray, score: np.ndarray, weight: np.ndarray | None) -> float:
    if len(np.unique(label)) < 2:
        return 0.0
    return -float(roc_auc_score(label, score, sample_weight=weight))


def _logloss(label: np.ndarray, score: np.ndarray, weight: np.ndarray | None) -> float:
    p = np.clip(score, 1e-7, 1 - 1e-7)
    return float(np.average(-(label * np.log(p) + (1 - label) * np.log(1 - p)), weights=weight))


def stopping_loss(params: dict[str, object]) -> Loss:
    """What the held-out loop stops on, as `fit_held_out` does: the first of `metric`, else log loss."""
    metric = params.get("metric") or "binary_logloss"
    first = str(metric[0] if isinstance(metric, list | tuple) else metric)
    if first == "auc":
        return _negative_auc
    if first in ("binary_logloss", "binary", "logloss"):
        return _logloss
    raise ValueError(f"metric: training on Dask early-stops on auc or binary_logloss, not {first!r}")


@dataclass
class DaskFitter:
    """Fits through `lightgbm.DaskLGBMClassifier` on the cluster behind `client`."""

    client: Client
    address: str

    def workers(self) -> int:
        return len(self.client.scheduler_info()["workers"])

    def describe(self) -> dict[str, str]:
        return {
            "trained_on": "dask",
            "dask_scheduler": self.address,
            "dask_workers": str(self.workers()),
            "dask_left_out": ",".join(UNSUPPORTED),
        }

    def _partitioned(self, data: TrainingSet, mask: np.ndarray) -> dd.DataFrame:
        """The rows of `mask` with their label (and weight), one partition per worker, held by the workers."""
        frame = data.design[mask].assign(**{LABEL: data.label[mask]})
        if data.weight is not None:
            frame[WEIGHT] = data.weight[mask]
        partitioned = dd.from_pandas(frame.reset_index(drop=True), npartitions=max(self.workers(), 1))
        return self.client.persist(partitioned)

    def _fit(
        self,
        rows: dd.DataFrame,
        columns: list[str],
        params: dict[str, object],
        rounds: int,
        init_model: lgb.Booster | None = None,
    ) -> lgb.Booster:
        lightgbm_params: dict[str, Any] = {k: v for k, v in params.items() if k not in (*UNSUPPORTED, "num_threads")}
        estimator = lgb.DaskLGBMClassifier(client=self.client, n_estimators=rounds, **lightgbm_params)
        weight = rows[WEIGHT] if WEIGHT in rows.columns else None
        with warnings.catch_warnings():
            # the estimator's own n_jobs default: each worker trains on as many threads as Dask gave it
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored", category=UserWarning)
            estimator.fit(rows[columns], rows[LABEL], sample_weight=weight, init_model=init_model)
        return estimator.booster_

    def held_out(self, data: TrainingSet, params: dict[str, object]) -> HeldOutFit:
        """Fit on the earlier part in chunks of `CHUNK_ROUNDS`, stopped on the later part like `fit_held_out`."""
        loss = stopping_loss(params)
        columns = list(data.design.columns)
        rows = self._partitioned(data, data.train)
        valid = data.design[data.valid]
        label = data.label[data.valid]
        weight = None if data.weight is None else data.weight[data.valid]
        raw = np.zeros(len(valid))
        booster: lgb.Booster | None = None
        base_seed = params.get("seed", 0)
        assert isinstance(base_seed, int)
        best_round, best_loss, scored, chunk = 0, np.inf, 0, 0
        while scored < MAX_ROUNDS and scored - best_round < EARLY_STOPPING:
            # each chunk bags rows and samples features afresh rather than repeating the first chunk's draws
            chunk_params = {**params, "bagging_seed": base_seed + chunk, "feature_fraction_seed": base_seed + chunk}
            rounds = min(CHUNK_ROUNDS, MAX_ROUNDS - scored)
            booster = self._fit(rows, columns, chunk_params, rounds, init_model=booster)
            for iteration in range(scored, booster.current_iteration()):
                raw += np.asarray(booster.predict(valid, raw_score=True, start_iteration=iteration, num_iteration=1))
                value = loss(label, 1.0 / (1.0 + np.exp(-raw)), weight)
                if value < best_loss:
                    best_round, best_loss = iteration + 1, value
            scored, chunk = booster.current_iteration(), chunk + 1
        assert booster is not None  # MAX_ROUNDS > 0
        booster.best_iteration = best_round
        return HeldOutFit(booster=booster, prediction=np.asarray(booster.predict(valid, num_iteration=best_round)))

    def rounds(self, data: TrainingSet, params: dict[str, object], rounds: int) -> lgb.Booster:
        rows = self._partitioned(data, np.ones(len(data.label), dtype=bool))
        return self._fit(rows, list(data.design.columns), params, rounds)


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> Client:
    """A client of the scheduler at `address`, once it has a worker; a `DaskSchedulerError` says what is wrong."""
    try:
        client = Client(address, timeout=timeout_s)
    except (OSError, TimeoutError) as error:
        raise DaskSchedulerError(
            f"SENDWISE_DASK_SCHEDULER={address}: no Dask scheduler answered there within {timeout_s:.0f} s "
            f"({error}); start one (dask scheduler, then dask worker {address}) or unset it to train in process"
        ) from error
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError as error:
        client.close()
        raise DaskSchedulerError(
            f"SENDWISE_DASK_SCHEDULER={address}: the scheduler has no workers after {timeout_s:.0f} s; start "
            f"some (dask worker {address})"
        ) from error
    return client


@contextmanager
def fitter(settings: Settings) -> Iterator[Fitter]:
    """Where a training job fits its boosters: on `settings.dask_scheduler`'s cluster, or in process (unset).

    `local` starts a `distributed.LocalCluster` on this machine's cores for the job and stops it after.
    """
    address = settings.dask_scheduler
    if address is None:
        yield IN_PROCESS
        return
    if address == "local":
        with LocalCluster() as cluster, Client(cluster) as client:
            yield DaskFitter(client, "local")
        return
    client = connect(address)
    try:
        yield DaskFitter(client, address)
    finally:
        client.close()
