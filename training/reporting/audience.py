"""The customers of the feature tables as sendwise would decide for them when the data ends.

The report's send-time, offer and segment sections describe what sendwise would do next, so they read the
champions the way the service does: the engine's own parts (`serving.engine.Engine`'s online features, open
curves and offer catalog) over every customer the online features know, for a promotional email without a
topic in the 24 hours after the data's end. Nothing is decided or logged: the decision log, which frequency
caps and no-repeat rules read, is left as it was.

Customer ids stay in memory, for joins with the raw store; nothing here writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from features.offer_values import TABLE as OFFER_VALUES_TABLE
from features.offer_values import OfferValues
from features.store import open_store
from features.transform import HOUR_FEATURES, HOURS_SINCE_VISIT, open_columns
from sendwise.asof import resolve_as_of
from sendwise.raw import load_table
from sendwise.registry import LoadedModel
from sendwise.settings import Settings
from serving.assign import in_holdout, local_window_clock
from serving.curves import hour_features
from serving.engine import Engine
from serving.offers import rank_offers, read_offer_features
from serving.online import BatchFeatures
from serving.schemas import Recipient

WINDOW_HOURS = 24
CAMPAIGN_KIND = "promotional"


def load_engine(settings: Settings, models: dict[str, LoadedModel]) -> Engine:
    """The engine over the home's champions and online features, without what the service does at start
    (forgetting old decisions, freezing the collector): the report only reads."""
    store = open_store(settings)
    offers = load_table(settings, "offers")
    priors_path = settings.feature_tables_dir / "rhythm_priors.parquet"
    priors = pd.read_parquet(priors_path) if priors_path.exists() else None
    values = OfferValues.read(settings.feature_tables_dir / f"{OFFER_VALUES_TABLE}.parquet")
    return Engine(settings, store, models, offers, read_offer_features(store, offers), None, priors, values)


@dataclass
class OfferChoice:
    """What sendwise would offer each recipient: the eligible offers, their values and the top-ranked one."""

    offers: pd.DataFrame
    """The eligible offers in column order (offer_id, kind, category, title, margin, ...)."""
    conversion: np.ndarray  # [recipients, offers]
    value: np.ndarray  # conversion × margin
    top: np.ndarray  # the column ranked first for each recipient
    control: np.ndarray  # the control arm's columns (empty: the catalog has none, or no values are known)
    incremental: np.ndarray | None  # value over the control arm's, [recipients, offers]
    ranked_by_model: bool


@dataclass
class Audience:
    """Every customer sendwise could email now, as the champions see them."""

    as_of: pd.Timestamp
    """When the data ends (its as-of)."""
    start: pd.Timestamp
    """The window's first hour (UTC): the first whole hour from the data's end."""
    known: int
    """Customers the online features know."""
    engine: Engine
    features: BatchFeatures
    ids: np.ndarray
    curves: np.ndarray
    """[recipients, hours]: the open probability of an email sent at each hour of the window."""
    best: np.ndarray
    """The window hour sendwise picks for each recipient (the highest of the curve, ties broken by rhythm)."""
    local_hour: np.ndarray
    """[recipients, hours]: the local clock hour of each window hour for each recipient."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def best_probability(self) -> np.ndarray:
        return self.curves[np.arange(len(self)), self.best]

    @property
    def best_local_hour(self) -> np.ndarray:
        return self.local_hour[np.arange(len(self)), self.best]

    @cached_property
    def segments(self) -> pd.DataFrame:
        """What customers are grouped by: time zone, country and every attribute (no id), one row each."""
        matrix = self.features.matrix
        frame = pd.DataFrame({"timezone": matrix.timezone})
        countries = _countries(self.engine.settings)
        country = pd.Series(self.ids).map(countries)
        frame["country"] = country.where(country.notna() & (country != ""), None).to_numpy()
        for name, values in matrix.attributes.items():
            frame[name] = values
        return frame

    def probability_at_local_hours(self) -> np.ndarray:
        """[recipients, 24]: the open probability of an email sent at each local clock hour of the window (an
        hour a clock change skips takes the next hour's)."""
        n = len(self)
        out = np.full((n, 24), np.nan)
        rows = np.arange(n)
        for k in range(self.curves.shape[1] - 1, -1, -1):  # the first window hour of a repeated local hour wins
            out[rows, self.local_hour[:, k]] = self.curves[:, k]
        for h in range(23, -1, -1):
            gap = np.isnan(out[:, h])
            out[gap, h] = out[gap, (h + 1) % 24]
        return out

    def open_design(self, booster_features: list[str]) -> pd.DataFrame:
        """The open model's design row of each recipient at sendwise's hour, as the engine scores a window: the
        customer's part at the window's first hour, the hour's part (`HOUR_FEATURES`) at sendwise's hour."""
        matrix = self.features.matrix
        n = len(self)
        rows = np.arange(n)
        kinds = np.full(n, CAMPAIGN_KIND)
        columns = open_columns(matrix, rows, self.start, kinds, np.full(n, None, dtype=object))
        hours = hour_features(matrix, rows, self.start.to_pydatetime(), self.curves.shape[1])
        chosen = rows * self.curves.shape[1] + self.best
        at_hour = {
            "rhythm_at_hour": hours["rhythm_at_hour"][chosen],
            "rhythm_vs_peak": hours["rhythm_vs_peak"][chosen],
            "is_weekend": (hours["local_weekday"][chosen] >= 5).astype(np.float32),
            HOURS_SINCE_VISIT: hours[HOURS_SINCE_VISIT][chosen],
        }
        for name in HOUR_FEATURES:
            if name in columns.values:
                columns.values[name] = at_hour[name]
        return columns.frame()[booster_features]

    @cached_property
    def offer_choice(self) -> OfferChoice | None:
        """The offers sendwise would rank first for each recipient, as a decide ranks them (None: no offers)."""
        catalog = self.engine.catalog
        chosen, conversion = catalog.conversion(self.features, self.start.to_pydatetime(), None)
        if chosen is None or conversion.shape[1] == 0:
            return None
        value = conversion * chosen.margins[None, :]
        control = np.flatnonzero(chosen.kinds == "control") if catalog.values_known() else np.zeros(0, np.int64)
        order, incremental = rank_offers(value, control, chosen.kinds, chosen.margins, catalog.model is None)
        return OfferChoice(
            offers=chosen.offers.reset_index(drop=True),
            conversion=np.asarray(conversion),
            value=np.asarray(value),
            top=np.asarray(order[:, 0]),
            control=control,
            incremental=incremental,
            ranked_by_model=catalog.model is not None,
        )


def _countries(settings: Settings) -> pd.Series:
    path = settings.feature_tables_dir / "customer_features.parquet"
    if not path.exists():
        return pd.Series(dtype=object)
    table = pd.read_parquet(path, columns=["customer_id", "country"])
    return table.drop_duplicates("customer_id", keep="last").set_index("customer_id")["country"]


def _materialized_customers(settings: Settings) -> np.ndarray:
    """The customers of the feature build, which `materialize` wrote to the online store."""
    path = settings.feature_tables_dir / "customer_features.parquet"
    if not path.exists():
        return np.zeros(0, dtype=object)
    ids = pd.read_parquet(path, columns=["customer_id"])["customer_id"].astype(str)
    return ids.drop_duplicates().to_numpy(dtype=object)


LATEST_READ_ROWS = 10_000
"""Customers whose latest activity one read of the online store asks for (a decision's largest batch)."""


def _latest_activity(engine: Engine, ids: list[str]) -> dict[str, np.ndarray]:
    """The customers' latest activity as the online store has it, read a decision's batch at a time."""
    starts = range(0, len(ids), LATEST_READ_ROWS) or [0]  # no customers: one read of none, for the columns
    parts = [engine.realtime.latest(ids[i : i + LATEST_READ_ROWS]) for i in starts]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def window_start(as_of: pd.Timestamp) -> pd.Timestamp:
    """The first whole hour from `as_of` on."""
    return as_of.tz_convert("UTC").ceil("h")


def score_audience(settings: Settings, engine: Engine) -> Audience | None:
    """Every customer of the online features who may be emailed (consent, not unsubscribed, not held out),
    with their open curve over the window and sendwise's hour; None when the home has no online features."""
    state = engine.online.state
    if state is not None:
        snapshot = state.snapshot
        ids = snapshot.index.to_numpy(dtype=object)[snapshot.known[: len(snapshot)]]
    elif settings.online_store == "redis":  # read per batch, no snapshot: the customers the build materialized
        ids = _materialized_customers(settings)
    else:
        return None
    features = engine.online.for_recipients([Recipient(customer_id=str(c)) for c in ids])
    known = int(features.known.sum())
    keep = features.known & features.eligible & ~in_holdout(list(ids), settings.holdout_share)
    rows = np.flatnonzero(keep)
    ids = ids[rows]
    features = engine.online.for_recipients([Recipient(customer_id=str(c)) for c in ids])
    if not features.latest_read:  # SQLite: the latest activity from the online store, as a decision reads it
        features.set_latest(_latest_activity(engine, [str(c) for c in ids]))
    as_of = resolve_as_of(settings).time
    start = window_start(as_of)
    curves, ranked = engine.curves.ranked(features.matrix, start.to_pydatetime(), WINDOW_HOURS, CAMPAIGN_KIND, None)
    local_hour, _ = local_window_clock(start.to_pydatetime(), WINDOW_HOURS, features.matrix.timezone.tolist())
    return Audience(
        as_of=as_of,
        start=start,
        known=known,
        engine=engine,
        features=features,
        ids=ids,
        curves=np.asarray(curves),
        best=np.asarray(ranked.argmax(axis=1)) if len(ids) else np.zeros(0, dtype=np.int64),
        local_hour=local_hour,
    )
