"""The offers a decision may carry: which are eligible, what each is worth to each recipient, and their ranking.

With a `next_best_offer` champion, every known customer's conversion probabilities are scored once per
snapshot of the online features (`OfferCatalog.score_snapshot`: the offer model reads no request context) and
looked up per decision; unknown recipients, whose context comes with the request, are scored when decided, and
so is every recipient of a batch whose features were read from Redis (no snapshot, no table: only the batch's
eligible offers are scored).
Without one, every recipient gets each offer's logged conversion rate (`features.offer_values`): one row
broadcast over the batch and one ranking shared by every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, SupportsFloat, cast

import numpy as np
import pandas as pd
from feast import FeatureStore

from features.offer_values import OfferValues
from features.repo import offer_feature_refs
from features.transform import (
    OFFER_LATEST_FEATURES,
    CustomerMatrix,
    OfferMatrix,
    feature_names,
    lightgbm_matrix,
    offer_columns,
    offer_latest_columns,
)
from sendwise.champions import LoadedModel
from sendwise.contract import OFFER_CONTENT
from serving.curves import predict, thresholds
from serving.modules import OfferFact
from serving.offer_scores import KeptScores, scores_key
from serving.online import BatchFeatures, OfferTable, OnlineState, RhythmPriors, batch_features
from serving.schemas import OfferScore
from serving.snapshot import FeatureSnapshot

OFFER_CHUNK = 20_000
"""Customers whose offers are scored per booster call when a snapshot is read."""
OFFER_SETS_KEPT = 256
"""Eligible offer sets remembered (by window start and offer list); all are forgotten when more are asked for."""


class OfferSummary(NamedTuple):
    """An eligible offer's id, kind, category and discount as plain values: what a decision's answer and its
    email name."""

    offer_id: str
    kind: str
    category: str | None
    discount_pct: float | None


def summarize_offers(offers: pd.DataFrame) -> list[OfferSummary]:
    """Each offer of a catalog frame as an `OfferSummary`."""
    out = []
    for offer in offers.to_dict("records"):
        category, discount = offer.get("category"), offer.get("discount_pct")
        out.append(
            OfferSummary(
                str(offer["offer_id"]),
                str(offer["kind"]),
                None if category is None or pd.isna(category) else str(category),
                None if discount is None or pd.isna(discount) else float(discount),
            )
        )
    return out


@dataclass(frozen=True)
class OfferSet:
    """The offers eligible for one window start, with what scoring and ranking them needs."""

    offers: pd.DataFrame  # with each offer's margin
    matrix: OfferMatrix
    summaries: list[OfferSummary]
    margins: np.ndarray  # what a conversion is worth (1 where the catalog gives no margin)
    kinds: np.ndarray

    @property
    def ids(self) -> list[str]:
        return [s.offer_id for s in self.summaries]


def eligible_offers(offers: pd.DataFrame | None, at: datetime, offer_ids: list[str] | None) -> pd.DataFrame:
    """Offers in stock and inside their dates at `at` (and among `offer_ids` where given)."""
    if offers is None or offers.empty:
        return pd.DataFrame()
    keep = pd.Series(True, index=offers.index)
    if "inventory" in offers.columns:
        keep &= ~(offers["inventory"].fillna(1) <= 0)
    stamp = pd.Timestamp(at)
    if "starts_at" in offers.columns:
        keep &= offers["starts_at"].isna() | (offers["starts_at"] <= stamp)
    if "ends_at" in offers.columns:
        keep &= offers["ends_at"].isna() | (offers["ends_at"] > stamp)
    if offer_ids is not None:
        keep &= offers["offer_id"].isin(offer_ids)
    return offers[keep].reset_index(drop=True)


def read_offer_features(store: FeatureStore | None, offers: pd.DataFrame | None) -> pd.DataFrame | None:
    """The catalog's offer features from Feast's online store, as the offer model's FeatureService names them
    (None without a store or offers)."""
    if offers is None or store is None or not len(offers):
        return None
    return (
        store.get_online_features(
            features=offer_feature_refs(),
            entity_rows=[{"offer_id": o} for o in offers["offer_id"]],
        )
        .to_df()
        .reset_index(drop=True)
    )


def offer_probabilities(
    matrix: CustomerMatrix, rows: np.ndarray, offers: OfferMatrix, model: LoadedModel, at: datetime | None = None
) -> np.ndarray:
    """[rows, offers]: the next-best-offer model on every (customer row, offer), from the float matrix LightGBM
    would convert the design's frame to (so by the compiled trees where they can be made; from the frame where
    the booster's categories are not the design's). The latest values are judged at `at` (None: as if no
    recent activity were known, what a snapshot's table holds)."""
    n, m = len(rows), len(offers)
    when = None if at is None else pd.Timestamp(at)
    columns = offer_columns(matrix, np.repeat(rows, m), offers, np.tile(np.arange(m), n), when)
    booster = model.booster
    design = lightgbm_matrix(columns, booster)
    if design is None:
        return predict(booster, columns.frame()[feature_names(booster)]).reshape(n, m)
    return predict(booster, design).reshape(n, m)


def rank_offers(
    value: np.ndarray, control: np.ndarray, kinds: np.ndarray, margins: np.ndarray, shared: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """(the offer columns of every row of `value` [rows, offers], best first; the incremental value over the
    control arm, where `control` names its columns).

    Offers are ranked by incremental value where the catalog has a control arm (the control arm itself among
    them: first means "send no offer"), else by expected value; equal values keep catalog order. `shared`: the
    values are the logged ones, the same for every row, and one ranking serves all; equal values (no
    conversions logged, or no exposures at all) then put an offer before the control arm, then the larger
    margin first."""
    rows = len(value)
    if value.shape[1] == 0:
        return np.zeros((rows, 0), dtype=np.int64), None
    incremental = None
    if len(control):
        incremental = value - value[:, control].max(axis=1, keepdims=True)
    score = incremental if incremental is not None else value
    if shared and rows:
        order = np.lexsort((-margins, kinds == "control", -score[0]))
        return np.broadcast_to(order, score.shape), incremental
    return np.argsort(-score, axis=1, kind="stable"), incremental


class OfferCatalog:
    """The home's offers (the catalog, their Feast features, their logged values) and the champion that scores
    them: eligibility per window, conversion probabilities per recipient, what rendering needs of an offer."""

    def __init__(
        self,
        offers: pd.DataFrame | None,
        offer_features: pd.DataFrame | None,
        offer_values: OfferValues | None,
        models: dict[str, LoadedModel],
        priors: RhythmPriors,
    ) -> None:
        self.offers = offers
        self._rows: tuple[pd.DataFrame | None, dict[str, dict[str, object]]] | None = None
        self.offer_features = offer_features
        self.offer_values = offer_values
        """What each offer earned per exposure in the logged data: how offers are ranked without an offer model."""
        self.models = models
        self.priors = priors
        self._sets: dict[tuple[datetime, tuple[str, ...] | None], OfferSet | None] = {}
        self._recent_bounds: tuple[int, np.ndarray] | None = None
        self._scored_catalog: tuple[object, tuple[OfferMatrix, bytes, dict[str, int]]] | None = None
        self._cell_bounds: tuple[object, tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def model(self) -> LoadedModel | None:
        return self.models.get("next_best_offer")

    @property
    def has_offers(self) -> bool:
        return self.offers is not None and bool(len(self.offers))

    def values_known(self) -> bool:
        """Whether offers have conversion probabilities (a model, or logged exposures): without, no incremental
        value over the control arm can be told."""
        if self.model is not None:
            return True
        return self.offer_values is not None and self.offer_values.prior_rate is not None

    def eligible(self, at: datetime, offer_ids: list[str] | None) -> OfferSet | None:
        """The offers eligible at `at` (among `offer_ids`), converted once per window start and list."""
        key = (at, None if offer_ids is None else tuple(offer_ids))
        found = self._sets.get(key)
        if found is not None or key in self._sets:
            return found
        eligible = eligible_offers(self.offers, at, offer_ids)
        chosen = None
        if not eligible.empty:
            matrix = self._matrix(eligible["offer_id"])
            eligible = eligible.assign(margin=matrix.margin)
            margins = eligible["margin"].fillna(1.0).to_numpy(dtype=np.float64)
            chosen = OfferSet(eligible, matrix, summarize_offers(eligible), margins, eligible["kind"].to_numpy())
        if len(self._sets) >= OFFER_SETS_KEPT:
            self._sets.clear()
        self._sets[key] = chosen
        return chosen

    def _matrix(self, offer_ids: pd.Series) -> OfferMatrix:
        if self.offer_features is not None:
            rows = self.offer_features
        elif self.offers is not None:  # no feature store: the catalog's own columns (logged values rank then)
            rows = self.offers.rename(columns={"kind": "offer_kind", "category": "offer_category"})
        else:
            raise RuntimeError("no offers in the home to convert")
        return OfferMatrix.from_rows(rows.set_index("offer_id").loc[offer_ids].reset_index())

    def conversion(
        self, features: BatchFeatures, at: datetime, offer_ids: list[str] | None
    ) -> tuple[OfferSet | None, np.ndarray]:
        """(eligible offers, conversion probability [customers, offers]) for a batch (`BatchFeatures`): looked
        up for known customers (scored when the snapshot was read), scored now for the others."""
        n = len(features.matrix)
        model = self.model
        if model is None:
            return self._logged_conversion(n, at, offer_ids)
        if self.offer_features is None:
            return None, np.zeros((n, 0))
        chosen = self.eligible(at, offer_ids)
        if chosen is None:
            return None, np.zeros((n, 0))
        if features.kept is not None:
            return chosen, np.clip(self._kept_conversion(features, features.kept, chosen, at, model), 0.0, 1.0)
        state = features.state
        columns = np.array([state.offer_columns.get(o, -1) for o in chosen.ids], dtype=np.int64)
        if len(columns) and (columns >= 0).all():
            conversion = state.offer_table[features.rows][:, columns].astype(np.float64)
            stale = ~features.known | np.isnan(conversion).any(axis=1) | self.recent(features.matrix, at, model)
            if features.withdrawn is not None:
                stale |= features.withdrawn  # scored on their own features: no longer theirs to use
            missing = np.flatnonzero(stale)
        else:
            conversion = np.zeros((n, len(chosen.ids)))
            missing = np.arange(n)
        if len(missing):
            conversion[missing] = offer_probabilities(features.matrix, missing, chosen.matrix, model, at)
        if not state.offer_columns and features.known.any():
            # No table of scores (features read per batch, `serving.redis_features`): the known customers were
            # scored just now, and are valued as a snapshot's float32 table holds them, whichever the store.
            conversion[features.known] = conversion[features.known].astype(np.float32)
        return chosen, np.clip(conversion, 0.0, 1.0)

    def _kept_conversion(
        self, features: BatchFeatures, kept: KeptScores, chosen: OfferSet, at: datetime, model: LoadedModel
    ) -> np.ndarray:
        """A batch read from Redis: known customers' scores looked up where Redis keeps valid ones for this
        champion, catalog, their features and the cells of their latest values at `at` (`serving.offer_scores`);
        the others scored now at `at` and kept in Redis for the next batch. Known customers are valued as a
        snapshot's float32 table holds them, whether looked up or scored now."""
        catalog = self.scored_catalog(model)
        if catalog is None:
            return np.zeros((len(features.matrix), len(chosen.ids)))
        offers, key, column_of = catalog
        columns = np.array([column_of[o] for o in chosen.ids], dtype=np.int64)
        kept_scores, kept_cells = kept.table(key, len(offers), len(features.state.snapshot) + 1)
        table, known = kept_scores[features.rows], features.known
        cells = self.latest_cells(features.matrix, at, model)
        valid = known & ~np.isnan(table).any(axis=1) & (kept_cells[features.rows] == cells).all(axis=1)
        withdrawn = features.withdrawn if features.withdrawn is not None else np.zeros(len(valid), dtype=bool)
        valid &= ~withdrawn  # kept scores rest on their own features: not theirs to use, nor theirs to keep
        missing = np.flatnonzero(~valid)
        if len(missing):
            table = table.astype(np.float64)
            table[missing] = offer_probabilities(features.matrix, missing, offers, model, at)
            table[known] = table[known].astype(np.float32)
            self._keep(features, kept, missing[known[missing] & ~withdrawn[missing]], cells, table, key)
        return table[:, columns].astype(np.float64)

    def _keep(
        self,
        features: BatchFeatures,
        kept: KeptScores,
        rows: np.ndarray,
        cells: np.ndarray,
        table: np.ndarray,
        key: bytes,
    ) -> None:
        """Write the scores of batch `rows` (each customer once), computed at `cells`, to Redis."""
        _, first = np.unique(features.rows[rows], return_index=True)
        rows = rows[first]
        position = np.full(len(features.state.snapshot) + 1, -1, dtype=np.int64)
        position[kept.rows] = np.arange(len(kept.rows))
        kept.write(position[features.rows[rows]], key, cells[rows], table[rows])

    def scored_catalog(self, model: LoadedModel) -> tuple[OfferMatrix, bytes, dict[str, int]] | None:
        """Every offer of the catalog as the offer model scores them, the key of their scores kept in Redis
        (`serving.offer_scores.scores_key`) and each offer's column; made once per champion."""
        if self.offer_features is None or self.offers is None or not len(self.offers):
            return None
        if self._scored_catalog is None or self._scored_catalog[0] is not model.booster:
            offers = self._matrix(self.offers["offer_id"])
            columns = {str(o): j for j, o in enumerate(offers.offer_id)}
            self._scored_catalog = (model.booster, (offers, scores_key(model.booster, offers), columns))
        return self._scored_catalog[1]

    def latest_cells(self, matrix: CustomerMatrix, at: datetime, model: LoadedModel) -> np.ndarray:
        """[rows, 2] int16: where the days since each customer's last visit and last purchase at `at` fall among
        the offer model's thresholds on them (those of the category inputs, which take the same days, included),
        with a cell of its own for 0 (a tree may send zero its missing-value way). Equal cells and equal
        features give the model equal inputs at every split."""
        booster = model.booster
        if self._cell_bounds is None or self._cell_bounds[0] is not booster:
            visit, purchase, viewed, bought = (thresholds(booster, name) for name in OFFER_LATEST_FEATURES)
            self._cell_bounds = (booster, (np.union1d(visit, viewed), np.union1d(purchase, bought)))
        bounds = self._cell_bounds[1]
        rows = np.arange(len(matrix))
        values = offer_latest_columns(matrix, rows, np.full(len(matrix), None, dtype=object), _seconds_of(at, rows))
        cells = np.empty((len(matrix), 2), dtype=np.int16)
        for k, (name, edges) in enumerate(zip(("days_since_visit", "days_since_purchase"), bounds, strict=True)):
            days = values[name].astype(np.float32).astype(np.float64)
            cells[:, k] = 2 * np.searchsorted(edges, days, side="left") + (days == 0)
        return cells

    def keep_scores(self, features: BatchFeatures, at: datetime) -> int:
        """Score every known customer of a batch read from Redis at `at` and keep the scores in Redis, where
        they are not already valid for that time; customers written."""
        model, kept = self.model, features.kept
        catalog = None if model is None or kept is None else self.scored_catalog(model)
        if catalog is None or kept is None or model is None:
            return 0
        offers, key, _ = catalog
        kept_scores, kept_cells = kept.table(key, len(offers), len(features.state.snapshot) + 1)
        table = kept_scores[features.rows]
        cells = self.latest_cells(features.matrix, at, model)
        same = ~np.isnan(table).any(axis=1) & (kept_cells[features.rows] == cells).all(axis=1)
        rows = np.flatnonzero(features.known & ~same)
        if len(rows):
            table[rows] = offer_probabilities(features.matrix, rows, offers, model, at).astype(np.float32)
            self._keep(features, kept, rows, cells, table, key)
        return len(rows)

    def recent(self, matrix: CustomerMatrix, at: datetime, model: LoadedModel) -> np.ndarray:
        """Per row: whether the customer's latest values at `at` reach a split of the offer model, so that the
        snapshot's table (scored as if no recent activity were known) does not hold their scores. A tree sees an
        input only through its thresholds: an input above its largest one is the same as the cap."""
        booster = model.booster
        if self._recent_bounds is None or self._recent_bounds[0] != id(booster):
            bounds = [thresholds(booster, name) for name in OFFER_LATEST_FEATURES]
            self._recent_bounds = (id(booster), np.array([b[-1] if len(b) else -np.inf for b in bounds]))
        largest = self._recent_bounds[1]
        if not np.isfinite(largest).any() or not matrix.latest:
            return np.zeros(len(matrix), dtype=bool)
        rows = np.arange(len(matrix))
        values = offer_latest_columns(matrix, rows, np.full(len(matrix), None, dtype=object), _seconds_of(at, rows))
        visit = values["days_since_visit"].astype(np.float64)
        purchase = values["days_since_purchase"].astype(np.float64)
        # the category inputs are the visit's and the purchase's days where the categories match, else the cap
        reach = (visit <= largest[0]) | (purchase <= largest[1])
        return np.asarray(reach | (visit <= largest[2]) | (purchase <= largest[3]))

    def _logged_conversion(
        self, n: int, at: datetime, offer_ids: list[str] | None
    ) -> tuple[OfferSet | None, np.ndarray]:
        """Without an offer model: every recipient gets each eligible offer's logged conversion rate (inverse-
        propensity weighted, shrunk toward the mean over offers: `features.offer_values`), one row shared by all."""
        chosen = self.eligible(at, offer_ids)
        if chosen is None:
            return None, np.zeros((n, 0))
        rates = self.offer_values.rates_of(chosen.ids) if self.offer_values is not None else np.zeros(len(chosen.ids))
        return chosen, np.broadcast_to(np.clip(rates, 0.0, 1.0), (n, len(rates)))

    def score_snapshot(self, snapshot: FeatureSnapshot) -> OfferTable:
        """Every known customer's conversion probability for every offer of the catalog, scored once per
        snapshot in chunks: the offer model reads no request context, so a decision looks its offers up."""
        model = self.model
        if model is None or self.offer_features is None or self.offers is None or not len(self.offers):
            return np.zeros((len(snapshot) + 1, 0), dtype=np.float32), {}
        offers = self._matrix(self.offers["offer_id"])
        table = np.full((len(snapshot) + 1, len(offers)), np.nan, dtype=np.float32)
        known = np.flatnonzero(snapshot.known)
        ids = snapshot.index.to_numpy()
        for first in range(0, len(known), OFFER_CHUNK):
            rows = known[first : first + OFFER_CHUNK]
            state = OnlineState(snapshot, table, {})
            features = batch_features(state, ids[rows].tolist(), rows, None, self.priors)
            table[rows] = offer_probabilities(features.matrix, np.arange(len(rows)), offers, model)
        return table, {str(o): j for j, o in enumerate(offers.offer_id)}

    def rows_by_id(self) -> dict[str, dict[str, object]]:
        """Each catalog offer's columns (missing values as None), by offer id: what the renderer shows. The
        offer's content (`contract.OFFER_CONTENT`: title, description, url, image_url) is always there, as text
        or None, also from a raw store ingested before the contract had it. Built once per offers table."""
        if self._rows is not None and self._rows[0] is self.offers:
            return self._rows[1]
        if self.offers is None:
            return {}
        catalog = {}
        for row in self.offers.to_dict("records"):
            entry = {str(k): (None if pd.isna(v) else v) for k, v in row.items() if not isinstance(v, list)}
            entry.update({name: _optional_str(entry.get(name)) for name in OFFER_CONTENT})
            catalog[str(row["offer_id"])] = entry
        self._rows = (self.offers, catalog)
        return catalog

    def facts_for_modules(self, offers: list[OfferScore]) -> list[OfferFact]:
        """A decision's ranked offers with the catalog's category and discount: what choosing modules reads."""
        catalog = self.rows_by_id()
        return [
            OfferFact(
                **o.model_dump(),
                category=_optional_str(catalog.get(o.offer_id, {}).get("category")),
                discount_pct=_optional_float(catalog.get(o.offer_id, {}).get("discount_pct")),
            )
            for o in offers
        ]


def _seconds_of(at: datetime, rows: np.ndarray) -> np.ndarray:
    return np.full(len(rows), pd.Timestamp(at).timestamp())


def _optional_str(value: object) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _optional_float(value: object) -> float | None:
    return None if value is None else float(cast(SupportsFloat, value))
