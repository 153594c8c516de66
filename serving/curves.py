"""Open-probability curves at campaign scale: one model row per customer plus a table of hours.

The open model's hour features (features/transform.py `HOUR_FEATURES`) only interact with each other, so its
log-odds are a customer part plus an hour part. The hour part is a sum of trees over the rhythm at the hour,
its ratio to the peak, the local weekday and the hours since the customer's last site visit: piecewise constant
between the trees' thresholds, so it is tabulated exactly once per model (the booster scores one grid row per
cell, with any fixed customer part). A visit minutes ago moves the first hours of a window and not the later
ones; the table has a cell for every threshold of the hours since it, so that costs nothing per customer.
A curve then costs one booster row per customer and a table look-up per hour, instead of a booster row per
hour. `CurveScorer.check` compares the two on real rows and `OpenCurves` falls back to scoring every hour when
they differ (a champion trained before the constraint).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.transform import (
    HOURS_SINCE_VISIT,
    CustomerMatrix,
    DesignColumns,
    feature_names,
    hours_since_visit,
    lightgbm_matrix,
    open_columns,
    open_design,
    rhythm_features,
)
from sendwise.champions import LoadedModel
from serving.assign import local_window_clock

AT_HOUR, VS_PEAK, WEEKDAY, WEEKEND = "rhythm_at_hour", "rhythm_vs_peak", "local_weekday", "is_weekend"
FALLBACK_OPEN_PROBABILITY = 0.2
"""Every hour's open probability when no open model is trained."""
TIE_BREAK = 1e-10
"""Weight of the customer's rhythm (24 × share of the day) added to an hour's probability to rank hours the
model rates the same."""
CHECK_CUSTOMERS = 50
CHECK_HOURS = 48
MAX_TABLE_CELLS = 3_000_000
"""A model whose hour features have more cells than this together is scored hour by hour instead."""
GRID_CHUNK_ROWS = 50_000
"""Rows of the tabulated grid's design scored at a time (a grid of 3,000,000 cells made whole held about 1 GB)."""
CURVE_TOLERANCE = 1e-9
"""Curves from the tabulated hour part must equal scoring every hour (to rounding) or are not used."""
SMALL_BATCH_ROWS = 2_000
"""Below this many rows one thread predicts faster than starting OpenMP's team (a single recipient: ~4 ms of
thread start-up on a busy machine for a 0.1 ms prediction)."""


_one_thread = False
_compiled_trees = True


def use_compiled_trees(on: bool) -> None:
    """Whether `predict` scores matrices with the boosters' compiled trees (`serving.compiled`, which imports
    numba: about 130 MB of compiler resident) or with LightGBM's own predict (`Settings.compiled_trees`); when on,
    the walk is compiled (or read from numba's cache) now rather than in the first request that predicts."""
    global _compiled_trees
    _compiled_trees = on
    if on:
        from serving.compiled import warm_up  # numba: only in a process that scores with it

        warm_up()


def predict_on_one_thread() -> None:
    """From now on this process predicts on one thread. For a process forked after LightGBM's OpenMP team
    ran: GNU libgomp's threads do not survive a fork, and a predict on more than one hangs (LightGBM's FAQ)."""
    global _one_thread
    _one_thread = True


def prediction_threads(rows: int, small: int = SMALL_BATCH_ROWS) -> int:
    """LightGBM's `num_threads` for a predict over `rows` rows: 1 for fewer than `small` (and in a forked
    process), its default (0: OpenMP's, a thread per core) otherwise."""
    return 1 if _one_thread or rows < small else 0


def predict(booster: lgb.Booster, rows: pd.DataFrame | np.ndarray, *, raw_score: bool = False) -> np.ndarray:
    """`booster.predict` on the threads `prediction_threads` gives: every prediction the service and the bulk
    path make goes through here, so none can start OpenMP's team in a forked worker. A matrix is scored by the
    booster's compiled trees (`serving.compiled`, checked equal to LightGBM first) where they can be made, unless
    `use_compiled_trees` turned them off."""
    if _compiled_trees and isinstance(rows, np.ndarray):
        from serving.compiled import compiled  # imported by `use_compiled_trees` already: a dictionary lookup

        trees = compiled(booster, rows)
        if trees is not None:
            return trees.predict(rows, raw_score=raw_score, threads=1 if _one_thread else 2)
    return np.asarray(booster.predict(rows, raw_score=raw_score, num_threads=prediction_threads(len(rows))))


def thresholds(booster: lgb.Booster, feature: str) -> np.ndarray:
    """Every threshold the trees split `feature` on, sorted (none where the booster does not have it)."""
    if feature not in feature_names(booster):
        return np.zeros(0, dtype=np.float64)
    index = feature_names(booster).index(feature)
    found: set[float] = set()

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" not in node:
            return
        if node["split_feature"] == index:
            found.add(float(node["threshold"]))
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return np.array(sorted(found), dtype=np.float64)


def _representatives(thresholds: np.ndarray) -> np.ndarray:
    """One float32 value per cell: the largest at or below each threshold (x <= t goes left), and one above."""
    below = thresholds.astype(np.float32)
    below = np.where(below.astype(np.float64) > thresholds, np.nextafter(below, np.float32(-np.inf)), below)
    top = np.float32(thresholds[-1] + 1.0) if len(thresholds) else np.float32(0.0)
    return np.append(below, top).astype(np.float32)


def _cell(thresholds: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The cell of each value: the first threshold at or above it (LightGBM sends x <= t left)."""
    return np.searchsorted(thresholds, values.astype(np.float32).astype(np.float64), side="left")


@dataclass
class CurveScorer:
    """The hour part of one booster's log-odds, tabulated over the cells of its hour features."""

    booster: lgb.Booster
    at_thresholds: np.ndarray
    vs_thresholds: np.ndarray
    visit_thresholds: np.ndarray
    table: np.ndarray  # [at cells, vs cells, visit cells, 7 weekdays]: the hour part, up to a constant

    @classmethod
    def build(cls, booster: lgb.Booster, reference: pd.DataFrame) -> CurveScorer | None:
        """Tabulate with `reference` (one design row) as the fixed customer part of every grid row; None where
        the grid would have more than `MAX_TABLE_CELLS` cells."""
        found = [thresholds(booster, name) for name in (AT_HOUR, VS_PEAK, HOURS_SINCE_VISIT)]
        at, vs, visit = (_representatives(t) for t in found)
        if len(at) * len(vs) * len(visit) * 7 > MAX_TABLE_CELLS:
            return None
        at_hour, vs_peak, since_visit, day = (
            g.ravel() for g in np.meshgrid(at, vs, visit, np.arange(7), indexing="ij")
        )
        names = feature_names(booster)
        reference = reference[names]
        raw = np.empty(at_hour.size)
        for first in range(0, raw.size, GRID_CHUNK_ROWS):  # the design a chunk at a time: a grid's rows are many
            cut = slice(first, min(first + GRID_CHUNK_ROWS, raw.size))
            rows = reference.iloc[np.zeros(cut.stop - cut.start, dtype=np.int64)].reset_index(drop=True)
            hour_columns = {
                AT_HOUR: at_hour[cut],
                VS_PEAK: vs_peak[cut],
                HOURS_SINCE_VISIT: since_visit[cut],
                WEEKDAY: day[cut],
                WEEKEND: day[cut] >= 5,
            }
            for name, values in hour_columns.items():
                if name in rows:
                    rows[name] = values.astype(np.float32)
            raw[cut] = predict(booster, rows, raw_score=True)
        at_thresholds, vs_thresholds, visit_thresholds = found
        return cls(
            booster, at_thresholds, vs_thresholds, visit_thresholds, raw.reshape(len(at), len(vs), len(visit), 7)
        )

    def hour_part(
        self, at_hour: np.ndarray, vs_peak: np.ndarray, weekday: np.ndarray, since_visit: np.ndarray
    ) -> np.ndarray:
        cells = (
            _cell(self.at_thresholds, at_hour),
            _cell(self.vs_thresholds, vs_peak),
            _cell(self.visit_thresholds, since_visit),
        )
        return np.asarray(self.table[(*cells, weekday)])

    def curves(
        self, first_hour: pd.DataFrame | np.ndarray, hour_features: dict[str, np.ndarray], hours: int
    ) -> np.ndarray:
        """[n, hours] open probabilities.

        `first_hour`: each customer's design row at the first hour of the window (the booster scores these), as
        a frame or as the matrix LightGBM converts one to (`features.transform.lightgbm_matrix`);
        `hour_features`: rhythm_at_hour, rhythm_vs_peak, local_weekday and hours_since_visit of every (customer,
        hour), row-major.
        """
        n = len(first_hour)
        rows = first_hour[feature_names(self.booster)] if isinstance(first_hour, pd.DataFrame) else first_hour
        raw_first = predict(self.booster, rows, raw_score=True)
        parts = self.hour_part(
            hour_features[AT_HOUR],
            hour_features[VS_PEAK],
            hour_features[WEEKDAY].astype(np.int64),
            hour_features[HOURS_SINCE_VISIT],
        ).reshape(n, hours)
        customer = raw_first - parts[:, 0]
        return np.asarray(1.0 / (1.0 + np.exp(-(customer[:, None] + parts))))

    def check(self, full_design: pd.DataFrame, first_hour: pd.DataFrame, hour_features: dict[str, np.ndarray]) -> float:
        """Largest difference in probability between the table and scoring every (customer, hour) row."""
        hours = len(full_design) // max(len(first_hour), 1)
        direct = predict(self.booster, full_design[feature_names(self.booster)]).reshape(-1, hours)
        return float(np.abs(self.curves(first_hour, hour_features, hours) - direct).max())


def hour_features(matrix: CustomerMatrix, customers: np.ndarray, start: datetime, hours: int) -> dict[str, np.ndarray]:
    """The hour features of every (customer, hour of the window), row-major: what the hour table looks up."""
    hour, weekday = local_window_clock(start, hours, matrix.timezone[customers])
    rows = np.repeat(customers, hours)
    at = start.timestamp() + 3600.0 * np.tile(np.arange(hours), len(customers))
    return {
        **rhythm_features(matrix, rows, hour.ravel(), weekday.ravel() >= 5),
        "local_weekday": weekday.ravel(),
        HOURS_SINCE_VISIT: hours_since_visit(matrix, rows, at),
    }


def window_design(
    matrix: CustomerMatrix, customers: np.ndarray, start: datetime, hours: int, kind: str, topic: str | None
) -> pd.DataFrame:
    """A design row per (customer, hour of the window): what the booster would score hour by hour."""
    rows = np.repeat(customers, hours)
    stamps = pd.date_range(start, periods=hours, freq="h", tz=UTC)
    times = pd.Series(np.tile(stamps.tz_convert(None).to_numpy(), len(customers))).dt.tz_localize("UTC")
    return open_design(matrix, rows, times, np.full(len(rows), kind), np.full(len(rows), topic, dtype=object))


class OpenCurves:
    """Open-probability curves over a window, from the champion that chooses send hours (`send_time`, else
    `open_propensity`): through each booster's tabulated hour part where it equals scoring every hour."""

    def __init__(self, models: dict[str, LoadedModel]) -> None:
        self.models = models
        self._scorers: dict[int, CurveScorer | None] = {}  # by booster: its tabulated hour part, or None
        self._lock = threading.Lock()

    @property
    def model(self) -> LoadedModel | None:
        return self.models.get("send_time") or self.models.get("open_propensity")

    def curves(self, matrix: CustomerMatrix, start: datetime, hours: int, kind: str, topic: str | None) -> np.ndarray:
        """[n, hours] open probabilities."""
        return self.ranked(matrix, start, hours, kind, topic)[0]

    def ranked(
        self, matrix: CustomerMatrix, start: datetime, hours: int, kind: str, topic: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """[n, hours] open probabilities, and the same with ties broken by the customer's rhythm at each hour
        (what the send time is chosen from).

        A tree model's hour part is a step function of the rhythm: the hours around a customer's peak often get
        exactly the same probability, and the first of them (the earliest) would be chosen. Among hours the model
        rates the same, the one where the customer is most around comes first instead (a millionth of a
        percentage point per unit of rhythm, far below any difference the model makes)."""
        n = len(matrix)
        model = self.model
        features = hour_features(matrix, np.arange(n), start, hours)
        tiebreak = TIE_BREAK * features[AT_HOUR].reshape(n, hours).astype(np.float64)
        if model is None or n == 0:
            flat = np.full((n, hours), FALLBACK_OPEN_PROBABILITY)
            return flat, flat + tiebreak
        columns = open_columns(
            matrix, np.arange(n), pd.Timestamp(start), np.full(n, kind), np.full(n, topic, dtype=object)
        )
        scorer = self._scorer(model, columns, matrix, start, kind, topic)
        if scorer is not None:
            first = lightgbm_matrix(columns, model.booster)
            curves = scorer.curves(columns.frame() if first is None else first, features, hours)
        else:
            design = window_design(matrix, np.arange(n), start, hours, kind, topic)
            curves = predict(model.booster, design[feature_names(model.booster)]).reshape(n, hours)
        curves = np.clip(curves, 0.0, 1.0)
        return curves, curves + tiebreak

    def _scorer(
        self,
        model: LoadedModel,
        columns: DesignColumns,
        matrix: CustomerMatrix,
        start: datetime,
        kind: str,
        topic: str | None,
    ) -> CurveScorer | None:
        """The model's tabulated hour part, checked against scoring every hour once per model version (on the
        frames training reads: the reference for the table and for the matrix the curves are scored from)."""
        key = id(model.booster)
        if key in self._scorers:
            return self._scorers[key]
        with self._lock:
            if key not in self._scorers:
                first = columns.frame()
                scorer = CurveScorer.build(model.booster, first.iloc[:1])
                sample = np.arange(min(len(first), CHECK_CUSTOMERS))
                features = hour_features(matrix, sample, start, CHECK_HOURS)
                full = window_design(matrix, sample, start, CHECK_HOURS, kind, topic)
                gap = np.inf if scorer is None else scorer.check(full, first.iloc[sample], features)
                # A champion whose hour features interact with the rest is scored hour by hour.
                self._scorers[key] = scorer if gap <= CURVE_TOLERANCE else None
        return self._scorers[key]
