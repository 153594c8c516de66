"""Training sets: labels from the feature build, features through each model's Feast FeatureService."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from feast import FeatureStore

from features.build import FeatureTables, count_in_previous_week
from features.transform import (
    SCALAR_FEATURES,
    CustomerMatrix,
    OfferMatrix,
    customer_matrix,
    offer_design,
    open_design,
)

VALID_SHARE = 0.2
HIDDEN_OPENS_SHARE = 0.5
"""Share of the customers whose sends are also shown with their open history hidden (open_training_set)."""
EPOCH = pd.Timestamp("2000-01-01", tz="UTC")
MIN_EXAMPLES = 200
"""Fewer closed sends (or offer exposures) than this train no model."""


@dataclass
class TrainingSet:
    """A design matrix with labels, the time of each example and the time split."""

    design: pd.DataFrame
    label: np.ndarray
    times: pd.Series
    cut: pd.Timestamp
    feature_service: str
    weight: np.ndarray | None = None
    held_out_customers: np.ndarray | None = None
    """Set when the examples have too few distinct times to split by time (an experiment logged at one
    instant): then the held-out part is a stable share of the customers instead."""
    sample: Sample | None = None
    """Set when the examples are a sample of more (`sample_rows`); `weight` is then 1 / its rate."""

    @property
    def train(self) -> np.ndarray:
        return ~self.valid

    @property
    def valid(self) -> np.ndarray:
        if self.held_out_customers is not None:
            return self.held_out_customers
        return (self.times >= self.cut).to_numpy()

    def window(self) -> dict[str, str]:
        split = {"split": "by time"}
        if self.held_out_customers is not None:
            split = {"split": f"{VALID_SHARE:.0%} of customers by a hash of their id (examples share one time)"}
        return {
            "data_start": str(self.times.min()),
            "train_end": str(self.cut),
            "valid_start": str(self.cut),
            "data_end": str(self.times.max()),
            **split,
        }


SAMPLE_SEED = 20_261_205


@dataclass(frozen=True)
class Sample:
    """Which examples a training set kept: every example of the rarer label up to half the cap, a seeded
    uniform sample of each label's rows past that, each row weighted by its label's available / kept."""

    available: int
    kept: int
    positives_available: int
    positives_kept: int

    @property
    def rate(self) -> float:
        return self.kept / self.available

    @property
    def positive_weight(self) -> float:
        return self.positives_available / self.positives_kept if self.positives_kept else 1.0

    @property
    def negative_weight(self) -> float:
        kept = self.kept - self.positives_kept
        return (self.available - self.positives_available) / kept if kept else 1.0

    def weights(self, label: np.ndarray) -> np.ndarray:
        """Each example's weight: how many available examples of its label it stands for."""
        return np.where(label > 0, self.positive_weight, self.negative_weight).astype(np.float32)

    def mlflow_params(self) -> dict[str, object]:
        return {
            "training_rows_sampled": "true",
            "training_rows_available": self.available,
            "training_rows_kept": self.kept,
            "training_positives_available": self.positives_available,
            "training_positives_kept": self.positives_kept,
            "training_sample_rate": round(self.rate, 6),
            "training_positive_weight": round(self.positive_weight, 6),
            "training_negative_weight": round(self.negative_weight, 6),
        }

    def sentence(self, name: str) -> str:
        negatives = self.available - self.positives_available
        return (
            f"{name}: trained on a sample of {self.kept:,} of {self.available:,} examples "
            f"(SENDWISE_TRAIN_MAX_ROWS): {self.positives_kept:,} of {self.positives_available:,} positives, each "
            f"weighted {self.positive_weight:.2f}, and {self.kept - self.positives_kept:,} of {negatives:,} "
            f"negatives, each weighted {self.negative_weight:.2f}"
        )


def sample_rows(label: np.ndarray, max_rows: int | None, seed: int = SAMPLE_SEED) -> tuple[np.ndarray, Sample | None]:
    """Rows of the examples to keep, in their order: all of them up to `max_rows`; past it, every example of
    the rarer label while they are at most half of `max_rows`, and a seeded uniform sample of the rest (of each
    label, half and half, when both have more), with what was kept.

    The rare label carries the information (conversions are a few in a hundred exposures): a uniform sample of
    a few percent of a large list would keep a few percent of them. With the weights (`Sample.weights`) the
    weighted rates, log loss and calibration, and so the open model's recalibration, are those of all the
    examples, and LightGBM's sums of hessians (its regularization) have the whole set's scale; AUC does not
    depend on the rate at which each label is kept.
    """
    n = len(label)
    if max_rows is None or n <= max_rows:
        return np.arange(n), None
    positive = np.asarray(label) > 0
    rng = np.random.default_rng(seed)
    rare = positive if positive.sum() <= n - positive.sum() else ~positive
    rare_rows, common_rows = np.flatnonzero(rare), np.flatnonzero(~rare)
    rare_kept = min(len(rare_rows), max(max_rows // 2, max_rows - len(common_rows)))
    chosen = [
        rng.choice(rare_rows, size=rare_kept, replace=False),
        rng.choice(common_rows, size=max_rows - rare_kept, replace=False),
    ]
    rows = np.sort(np.concatenate(chosen))
    return rows, Sample(
        available=n, kept=max_rows, positives_available=int(positive.sum()), positives_kept=int(positive[rows].sum())
    )


def _weights(sample: Sample | None, label: np.ndarray) -> np.ndarray | None:
    return None if sample is None else sample.weights(label)


def _split(times: pd.Series, customers: pd.Series) -> tuple[pd.Timestamp, np.ndarray | None]:
    """The time cut, and where time cannot split the examples (nothing before the cut), a customer split."""
    cut = _time_cut(times)
    if (times < cut).mean() >= VALID_SHARE / 2:
        return cut, None
    bucket = pd.util.hash_pandas_object(customers.astype(str), index=False).to_numpy() % 1000
    return cut, bucket < VALID_SHARE * 1000


def historical_features(store: FeatureStore, service: str, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time feature rows for the entity rows, in their order (Feast may reorder them)."""
    entity_df = entity_df.assign(_row=np.arange(len(entity_df)))
    rows = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(service)).to_df()
    return rows.sort_values("_row").reset_index(drop=True)


def _time_cut(times: pd.Series) -> pd.Timestamp:
    return times.quantile(1 - VALID_SHARE)


def sends_in_previous_week(sends: pd.DataFrame, customers: pd.Series, at: pd.Series) -> np.ndarray:
    """For each (customer, time): the emails `sends` has for the customer in the 7 days before that time."""
    codes, names = pd.factorize(sends["customer_id"])
    where = pd.Index(names).get_indexer(customers)
    counts = count_in_previous_week(
        codes,
        (sends["send_at"] - EPOCH).dt.total_seconds().to_numpy(),
        np.maximum(where, 0),
        (at - EPOCH).dt.total_seconds().to_numpy(),
    )
    return np.where(where >= 0, counts, 0).astype(np.float32)


def _hash_share(customers: pd.Series, share: float, salt: str) -> np.ndarray:
    """A stable pseudo-random `share` of the customers (by a hash of their id), the same in every run."""
    bucket = pd.util.hash_pandas_object(customers.astype(str) + salt, index=False).to_numpy() % 1000
    return bucket < share * 1000


def open_training_set(
    store: FeatureStore, tables: FeatureTables, label_hours: int, max_rows: int | None = None
) -> TrainingSet | None:
    """Sends whose label window has closed, with the open model's features at the send time (at most
    `max_rows` of them: `sample_rows`).

    The sends of proxied recipients carry no label (their opens are the proxy's: `features.labels`) and are
    left out. So that the model can answer for proxied customers, the sends of a stable half of the others are
    shown a second time as a proxied customer's would be (`opens_observable` 0, so their open history is
    unknown): it learns, from people whose opens are seen, what their other signals say.
    """
    sends = tables.sends
    if sends is None or len(sends) == 0 or "human_open" not in sends.columns:
        return None
    # One mask, one copy: a million customers' sends are tens of millions of rows.
    kept = (sends["send_at"] <= tables.as_of - pd.Timedelta(hours=label_hours)).to_numpy()
    if "proxied" in sends.columns:
        kept &= ~sends["proxied"].astype(bool).to_numpy()
    kept &= sends["customer_id"].isin(tables.customers["customer_id"]).to_numpy()
    sends = sends[kept].reset_index(drop=True)
    if len(sends) < MIN_EXAMPLES or sends["human_open"].nunique() < 2:
        return None
    kept, sample = sample_rows(sends["human_open"].to_numpy(dtype=np.float32), max_rows)
    sends = sends.iloc[kept].reset_index(drop=True) if sample is not None else sends
    entity_df = pd.DataFrame({"customer_id": sends["customer_id"], "event_timestamp": sends["send_at"]})
    rows = historical_features(store, "open_propensity_v1", entity_df)
    matrix = customer_matrix(rows)
    # Fatigue at the moment of each send, not at the start of its day: a day-start count misses the sends
    # earlier that day, and a blurred count teaches the model too weak a fatigue effect.
    matrix.scalars[:, SCALAR_FEATURES.index("sends_7d")] = sends_in_previous_week(
        tables.sends, sends["customer_id"], sends["send_at"]
    )
    hidden = np.flatnonzero(_hash_share(sends["customer_id"], HIDDEN_OPENS_SHARE, "opens-hidden"))
    examples = np.concatenate([np.arange(len(sends)), hidden])
    matrix = matrix.take(examples)
    matrix.scalars[len(sends) :, SCALAR_FEATURES.index("opens_observable")] = 0.0
    design = open_design(
        matrix,
        np.arange(len(examples)),
        sends["send_at"].iloc[examples].reset_index(drop=True),
        sends["kind"].to_numpy()[examples],
        sends["topic"].to_numpy()[examples],
    )
    return TrainingSet(
        design=design,
        label=sends["human_open"].to_numpy(dtype=np.float32)[examples],
        times=sends["send_at"].iloc[examples].reset_index(drop=True),
        cut=_split(sends["send_at"], sends["customer_id"])[0],
        feature_service="open_propensity_v1",
        weight=_weights(sample, sends["human_open"].to_numpy(dtype=np.float32)[examples]),
        held_out_customers=_held_out(sends, examples),
        sample=sample,
    )


def _held_out(sends: pd.DataFrame, examples: np.ndarray) -> np.ndarray | None:
    """The customer split of the examples where time cannot split them (see `_split`)."""
    _, by_customer = _split(sends["send_at"], sends["customer_id"])
    return None if by_customer is None else by_customer[examples]


def window_ends(exposures: pd.DataFrame, window_days: float) -> pd.Series:
    """When each exposure's conversion window closes: its own `window_days`, else `window_days`, after it."""
    own = exposures["window_days"] if "window_days" in exposures.columns else pd.Series(np.nan, index=exposures.index)
    days = pd.to_numeric(own, errors="coerce").fillna(float(window_days))
    return exposures["exposed_at"] + pd.to_timedelta(days, unit="D")


def window_closed(exposures: pd.DataFrame, as_of: pd.Timestamp, window_days: float) -> np.ndarray:
    """Which exposures' conversion windows closed by `as_of`."""
    return (window_ends(exposures, window_days) <= as_of).to_numpy()


def closed_exposures(tables: FeatureTables, window_days: float) -> pd.DataFrame:
    """The exposures the offer model learns from: closed windows, offers and customers known, in order."""
    exposures = tables.exposures
    exposures = exposures[window_closed(exposures, tables.as_of, window_days)]
    exposures = exposures[exposures["offer_id"].isin(tables.offers["offer_id"])]
    return exposures[exposures["customer_id"].isin(tables.customers["customer_id"])].reset_index(drop=True)


def offer_training_set(
    store: FeatureStore, tables: FeatureTables, window_days: float, max_rows: int | None = None
) -> tuple[TrainingSet, OfferMatrix] | None:
    """Offer exposures whose conversion window has closed, with the offer model's features. `window_days` is
    the window of offers that set none of their own; at most `max_rows` exposures (`sample_rows`).

    The examples are not weighted by inverse propensity: the logging policy chose offers from what the model
    sees too (the offer, the customer's interests and history), so the conversion probability given those is
    learned without bias as it is, and weights of up to 1 / propensity only add variance (offer efficiency
    0.915 unweighted against 0.907 weighted on a realistic development world, 0.917 against 0.900 on another).
    Propensities still serve the off-policy evaluation of policies (training/offpolicy.py).
    """
    exposures = tables.exposures
    if exposures is None or len(exposures) == 0 or tables.offers is None or len(tables.offers) == 0:
        return None
    exposures = closed_exposures(tables, window_days)
    if len(exposures) < MIN_EXAMPLES or exposures["converted"].nunique() < 2:
        return None
    kept, sample = sample_rows(exposures["converted"].to_numpy(dtype=np.float32), max_rows)
    exposures = exposures.iloc[kept].reset_index(drop=True) if sample is not None else exposures
    entity_df = pd.DataFrame(
        {
            "customer_id": exposures["customer_id"],
            "offer_id": exposures["offer_id"],
            "event_timestamp": exposures["exposed_at"],
        }
    )
    cut, by_customer = _split(exposures["exposed_at"], exposures["customer_id"])
    rows = historical_features(store, "next_best_offer_v1", entity_df)
    matrix: CustomerMatrix = customer_matrix(rows)
    offers = OfferMatrix.from_rows(rows)
    at = exposures["exposed_at"].reset_index(drop=True)
    design = offer_design(matrix, np.arange(len(rows)), offers, np.arange(len(rows)), at)
    return (
        TrainingSet(
            design=design,
            label=exposures["converted"].to_numpy(dtype=np.float32),
            times=exposures["exposed_at"],
            cut=cut,
            held_out_customers=by_customer,
            feature_service="next_best_offer_v1",
            weight=_weights(sample, exposures["converted"].to_numpy(dtype=np.float32)),
            sample=sample,
        ),
        offers,
    )
