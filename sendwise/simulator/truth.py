"""The ground truth of a simulated world: the one definition of how its customers behave.

`sendwise.simulator` draws every open, session and conversion from the functions here, and
`World.load(world_dir)` answers the same questions from `world_dir/truth/` alone, so models can be measured
against the probabilities that made the data. docs/simulator.md describes the model in plain words.

Two layers:
- the public API (`open_probability`, `hourly_open_probability`, `conversion_probability`,
  `offer_expected_value`) takes customer ids, offer ids and time stamps;
- the index-level methods (`open_probability_at`, `activity_at`, `conversion_probability_at`) take row
  positions and UTC seconds; the simulator calls these, and the public API is a thin layer over them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CATEGORIES: tuple[str, ...] = (
    "outdoor",
    "books",
    "fashion",
    "home",
    "beauty",
    "electronics",
    "sports",
    "kids",
)
KINDS: tuple[str, ...] = ("promotional", "newsletter", "triggered", "transactional")
TRUTH_DIR = "truth"
HOUR = 3600.0
DAY = 86400.0
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
_CLOCK_STEP = 900.0  # offsets tabulated per quarter hour: every zone changes offset on a quarter hour
_WORLD_JSON = "world.json"
_CUSTOMERS_PARQUET = "customers.parquet"
_OFFERS_PARQUET = "offers.parquet"


@dataclass(frozen=True)
class Coefficients:
    """The world's shared coefficients (per-customer and per-offer parameters live in the truth tables)."""

    kind_effect: dict[str, float] = field(
        default_factory=lambda: {
            "promotional": 0.0,
            "newsletter": 0.15,
            "triggered": 0.9,
            "transactional": 1.6,
        }
    )
    topic_open: float = 0.35
    affinity_clip: float = 2.0
    conversion_affinity: float = 0.8
    conversion_discount: float = 6.0
    open_window_hours: int = 72
    conversion_window_days: int = 7
    recent_visit_open: float = 1.2
    """Open logit added by a site visit just before the send, fading as exp(−hours since / `recent_visit_hours`)."""
    recent_visit_hours: float = 4.0
    viewed_interest: float = 0.9
    """Conversion logit added to offers in the category the customer last viewed, fading over `viewed_interest_days`."""
    viewed_interest_days: float = 3.0
    purchase_satiation: float = 1.5
    """Conversion logit taken from offers in the category the customer last bought, fading over
    `purchase_satiation_days`."""
    purchase_satiation_days: float = 10.0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Coefficients:
        return cls(**values)


@dataclass(frozen=True)
class Recent:
    """What a customer did last on the site as of time `t` (arrays broadcast together; NaN or -1: never).

    `visit`: the last site event; `view`/`view_category`: the last product view, cart or purchase and its
    category (a code of `CATEGORIES`); `purchase`/`purchase_category`: the last purchase and its category.
    """

    t: np.ndarray
    visit: np.ndarray
    view: np.ndarray
    view_category: np.ndarray
    purchase: np.ndarray
    purchase_category: np.ndarray


RECENT_COLUMNS = ("last_visit_s", "last_view_s", "last_view_category", "last_purchase_s", "last_purchase_category")
"""The customers' recent activity at `end` in the truth table (seconds since 1970; category codes, -1: none)."""


def _fading(t: np.ndarray, since: np.ndarray, scale_s: float) -> np.ndarray:
    """exp(−(t − since) / scale) where `since` is known and not after `t`, else 0."""
    elapsed = np.asarray(t, dtype=np.float64) - np.asarray(since, dtype=np.float64)
    known = np.isfinite(elapsed) & (elapsed >= 0)
    return np.where(known, np.exp(-np.where(known, elapsed, 0.0) / scale_s), 0.0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def utc_seconds(values: Any) -> np.ndarray:
    """Seconds since the epoch of tz-aware time stamps (a scalar gives a one-element array).

    Naive time stamps are refused: the truth does not guess which zone they were meant in.
    """
    if isinstance(values, str | datetime | pd.Timestamp | np.datetime64):
        stamp = pd.Timestamp(values)
        if stamp.tzinfo is None:
            raise ValueError(f"time stamp {values!r} has no time zone; give it in UTC, e.g. '2026-11-01T14:00Z'")
        return np.array([(stamp - _EPOCH) / pd.Timedelta(seconds=1)])
    index = pd.DatetimeIndex(values)
    if index.tz is None:
        raise ValueError("time stamps have no time zone; give tz-aware (UTC) time stamps")
    return ((index.tz_convert("UTC") - _EPOCH) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)


def to_timestamp(seconds: float) -> pd.Timestamp:
    return _EPOCH + pd.Timedelta(seconds=float(seconds))


class ZoneClock:
    """Local hour and weekend flag of UTC instants in a fixed list of zones, vectorized.

    UTC offsets are tabulated per zone for every quarter hour of a range, so converting millions of instants
    is one table look-up (zoneinfo applies daylight saving time).
    """

    def __init__(self, zones: Sequence[str], t_min: float, t_max: float) -> None:
        self.zones = tuple(zones)
        self.t0 = np.floor(t_min / DAY) * DAY - DAY
        n_steps = int(np.ceil((t_max - self.t0) / _CLOCK_STEP)) + int(DAY / _CLOCK_STEP)
        grid = pd.date_range(to_timestamp(self.t0), periods=n_steps, freq=f"{int(_CLOCK_STEP)}s")
        naive = grid.tz_localize(None)
        self.offsets = np.empty((max(len(self.zones), 1), n_steps), dtype=np.float64)
        for z, zone in enumerate(self.zones):
            local = grid.tz_convert(zone).tz_localize(None)
            self.offsets[z] = (local - naive) / pd.Timedelta(seconds=1)
        self.t1 = self.t0 + n_steps * _CLOCK_STEP

    def covers(self, t_min: float, t_max: float) -> bool:
        return self.t0 <= t_min and t_max < self.t1

    def local(self, zone_idx: np.ndarray, utc_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(local hour 0..23, weekend flag) for each instant; arrays of any (matching) shape."""
        step = ((utc_s - self.t0) // _CLOCK_STEP).astype(np.int64)
        local_s = utc_s + self.offsets[zone_idx, step]
        hour = (np.floor(local_s / HOUR) % 24).astype(np.intp)
        weekday = (np.floor(local_s / DAY).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
        return hour, weekday >= 5


class World:
    """A simulated world's ground truth: its customers' and offers' parameters and the true probabilities.

    Construct it with `World.load(world_dir)`; the simulator builds one in memory and saves it.
    """

    def __init__(
        self,
        *,
        end: pd.Timestamp,
        coefficients: Coefficients,
        customer_params: pd.DataFrame,
        offer_params: pd.DataFrame,
        meta: dict[str, Any] | None = None,
        truth_dir: Path | None = None,
    ) -> None:
        self.end = pd.Timestamp(end).tz_convert("UTC")
        self.coefficients = coefficients
        self.meta = dict(meta or {})
        self.categories = tuple(self.meta.get("categories", CATEGORIES))
        self.customer_params = customer_params.reset_index(drop=True)
        self.offer_params = offer_params.reset_index(drop=True)
        self.truth_dir = truth_dir
        self._clock: ZoneClock | None = None
        self._index_customers()
        self._index_offers()

    # --- loading and saving -------------------------------------------------------------------------
    @classmethod
    def load(cls, world_dir: Path | str) -> World:
        truth_dir = Path(world_dir) / TRUTH_DIR
        world_json = truth_dir / _WORLD_JSON
        if not world_json.is_file():
            raise FileNotFoundError(f"{world_json} not found: is {world_dir} a world written by `sendwise simulate`?")
        meta = json.loads(world_json.read_text(encoding="utf-8"))
        return cls(
            end=pd.Timestamp(meta["end"]),
            coefficients=Coefficients.from_dict(meta["coefficients"]),
            customer_params=pq.read_table(truth_dir / _CUSTOMERS_PARQUET).to_pandas(),
            offer_params=pq.read_table(truth_dir / _OFFERS_PARQUET).to_pandas(),
            meta=meta,
            truth_dir=truth_dir,
        )

    def save(self, world_dir: Path | str) -> None:
        """Write `truth/world.json`, `truth/customers.parquet` and `truth/offers.parquet`."""
        truth_dir = Path(world_dir) / TRUTH_DIR
        truth_dir.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "end": self.end.isoformat(), "coefficients": asdict(self.coefficients)}
        meta["categories"] = list(self.categories)
        (truth_dir / _WORLD_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        pq.write_table(pa.Table.from_pandas(self.customer_params, preserve_index=False), truth_dir / _CUSTOMERS_PARQUET)
        offers = self.offer_params.assign(eligible=self._eligible())
        pq.write_table(pa.Table.from_pandas(offers, preserve_index=False), truth_dir / _OFFERS_PARQUET)
        self.truth_dir = truth_dir

    def set_end_state(self, sends_in_prev_7d: np.ndarray, suppressed: np.ndarray, recent: Recent | None = None) -> None:
        """Record each customer's state at `end` (the simulator calls this once it has sent everything); `recent`
        where the world has the recent-activity effect."""
        self.customer_params["sends_in_prev_7d"] = sends_in_prev_7d.astype(np.int64)
        self.customer_params["suppressed"] = suppressed.astype(bool)
        self._sends7 = self.customer_params["sends_in_prev_7d"].to_numpy(np.float64)
        if recent is not None:
            values = (recent.visit, recent.view, recent.view_category, recent.purchase, recent.purchase_category)
            for name, value in zip(RECENT_COLUMNS, values, strict=True):
                self.customer_params[name] = value
            self._index_recent()

    @property
    def has_recent_activity(self) -> bool:
        """Whether recent site activity moves this world's probabilities (docs/simulator.md)."""
        return bool((self.meta.get("realism") or {}).get("recent_activity", False))

    def recent_at_end(self, c: np.ndarray) -> Recent:
        """Customers' recent activity at `end`: what the truth's public API uses for any later time."""
        return Recent(
            t=np.full(np.shape(c), self._end_s),
            visit=self._last_visit[c],
            view=self._last_view[c],
            view_category=self._view_category[c],
            purchase=self._last_purchase[c],
            purchase_category=self._purchase_category[c],
        )

    # --- what the world looks like --------------------------------------------------------------------
    @property
    def customers(self) -> pd.DataFrame:
        """customer_id, timezone (the true zone), country, consent_email, consent_profiling."""
        columns = ["customer_id", "timezone", "country", "consent_email", "consent_profiling"]
        return self.customer_params[columns].copy()

    @property
    def offers(self) -> pd.DataFrame:
        """offer_id, kind, category, discount_pct, margin, eligible (in stock and in its dates at `end`)."""
        columns = ["offer_id", "kind", "category", "discount_pct", "margin"]
        return self.offer_params[columns].assign(eligible=self._eligible())

    def email_opens(self) -> pd.DataFrame:
        """Every open in the data: event_id, message_id, customer_id, occurred_at, is_machine, source, and
        `via_proxy` (a person's own open that arrived through the privacy proxy)."""
        return self._truth_table("email_opens.parquet")

    def email_clicks(self) -> pd.DataFrame:
        """Every click in the data: event_id, message_id, customer_id, occurred_at, is_machine, source."""
        return self._truth_table("email_clicks.parquet")

    def messages(self) -> pd.DataFrame:
        """Every email sent, with its true open and conversion probabilities and what happened."""
        return self._truth_table("messages.parquet")

    # --- the true probabilities, by id -----------------------------------------------------------------
    def open_probability(
        self,
        customer_ids: Any,
        send_times: Any,
        kind: str | Sequence[str] = "promotional",
        topic: str | Sequence[str | None] | None = None,
        sends_in_prev_7d: Any = None,
        last_visit_at: Any = None,
    ) -> np.ndarray:
        """True P(a human opens within 72 h | the email is delivered at `send_times`), one per pair.

        Fatigue and the last site visit are the customer's state at `end` (sends in the 7 days before it, the
        last visit before it) unless `sends_in_prev_7d` or `last_visit_at` (tz-aware; NaT: none) is given. A
        scalar customer id or time is broadcast against the other argument. A topic that is not one of the
        world's categories has no affinity effect.
        """
        c = np.atleast_1d(self.customer_index(customer_ids))
        t = utc_seconds(send_times)
        c, t = np.broadcast_arrays(c, t)
        sends = self._sends7[c] if sends_in_prev_7d is None else np.asarray(sends_in_prev_7d, dtype=np.float64)
        visit = None
        if last_visit_at is not None:
            visit = utc_seconds(pd.Series(last_visit_at if np.ndim(last_visit_at) else [last_visit_at]))
        kinds, topics = self._kind_codes(kind, len(c)), self._topic_codes(topic, len(c))
        return self.open_probability_at(c, t, kinds, topics, sends, visit)

    def hourly_open_probability(
        self,
        customer_ids: Any,
        window_start: Any,
        hours: int = 24,
        kind: str = "promotional",
        topic: str | None = None,
    ) -> np.ndarray:
        """[n, hours]: entry k is `open_probability` for a send at `window_start` + k hours."""
        c = np.atleast_1d(self.customer_index(customer_ids))
        start = utc_seconds(window_start)
        if start.size not in (1, c.size):
            raise ValueError(f"window_start has {start.size} values for {c.size} customers")
        t = start.reshape(-1, 1) + HOUR * np.arange(hours)
        c2, t2 = np.broadcast_arrays(c[:, None], t)
        kinds = np.full(c2.shape, self._kind_codes(kind, 1)[0])
        topics = np.full(c2.shape, self._topic_codes(topic, 1)[0])
        return self.open_probability_at(c2, t2, kinds, topics, self._sends7[c2])

    def conversion_probability(self, customer_ids: Any, offer_ids: Any = None) -> np.ndarray:
        """[n, m]: true P(the customer converts on the offer within 7 days | an email carrying it is sent).

        `offer_ids=None` means every offer, in the order of `world.offers`.
        """
        c = np.atleast_1d(self.customer_index(customer_ids))
        o = np.arange(len(self.offer_params)) if offer_ids is None else np.atleast_1d(self.offer_index(offer_ids))
        return self.conversion_probability_at(c[:, None], o[None, :])

    def offer_expected_value(self, customer_ids: Any, offer_ids: Any = None) -> np.ndarray:
        """[n, m]: conversion probability × the offer's margin."""
        o = np.arange(len(self.offer_params)) if offer_ids is None else np.atleast_1d(self.offer_index(offer_ids))
        return self.conversion_probability(customer_ids, self._offer_ids[o]) * self._margin[o][None, :]

    # --- the true probabilities, by row position (what the simulator draws from) ------------------------
    def customer_index(self, customer_ids: Any) -> np.ndarray:
        ids = np.atleast_1d(np.asarray(customer_ids, dtype=object))
        positions = self._customer_pos.get_indexer(ids)
        if (positions < 0).any():
            unknown = list(dict.fromkeys(ids[positions < 0]))[:5]
            raise KeyError(f"customer_id not in this world: {unknown}")
        return positions

    def offer_index(self, offer_ids: Any) -> np.ndarray:
        ids = np.atleast_1d(np.asarray(offer_ids, dtype=object))
        positions = self._offer_pos.get_indexer(ids)
        if (positions < 0).any():
            raise KeyError(f"offer_id not in this world: {list(ids[positions < 0])[:5]}")
        return positions

    def local_clock(self, c: np.ndarray, utc_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(local hour, weekend flag) of UTC instants in each customer's true zone."""
        if np.size(utc_s) == 0:
            return np.zeros(np.shape(utc_s), dtype=np.intp), np.zeros(np.shape(utc_s), dtype=bool)
        clock = self.clock(float(np.min(utc_s)), float(np.max(utc_s)))
        return clock.local(self._zone[c], utc_s)

    def clock(self, t_min: float, t_max: float) -> ZoneClock:
        if self._clock is None or not self._clock.covers(t_min, t_max):
            self._clock = ZoneClock(self.zones, t_min, t_max)
        return self._clock

    def activity_at(self, c: np.ndarray, utc_s: np.ndarray) -> np.ndarray:
        """Share of the customer's daily activity in the local hour of each instant (sums to 1 a day)."""
        c, utc_s = np.broadcast_arrays(c, utc_s)
        hour, weekend = self.local_clock(c, utc_s)
        return self._profiles[c, weekend.astype(np.intp), hour]

    def open_logit_at(
        self,
        c: np.ndarray,
        utc_s: np.ndarray,
        kind: np.ndarray,
        topic: np.ndarray,
        sends_7d: np.ndarray,
        last_visit: np.ndarray | None = None,
    ) -> np.ndarray:
        """base + kind + topic affinity − fatigue × sends in the previous 7 days + the hour effect, + where the
        world has it, the fading lift of a site visit shortly before (`last_visit`, default: the last at `end`)."""
        hour, weekend = self.local_clock(c, utc_s)
        day_type = weekend.astype(np.intp)
        relative_activity = self._profiles[c, day_type, hour] / self._profile_max[c, day_type]
        logit = (
            self._base[c]
            + self._kind_effect[kind]
            + self.coefficients.topic_open * self.affinity_effect(c, topic)
            - self._fatigue[c] * sends_7d
            + self._amplitude[c] * (relative_activity - 1.0)
        )
        if self.has_recent_activity:
            k = self.coefficients
            visit = self._last_visit[c] if last_visit is None else last_visit
            logit = logit + k.recent_visit_open * _fading(utc_s, visit, k.recent_visit_hours * HOUR)
        return logit

    def open_probability_at(
        self,
        c: np.ndarray,
        utc_s: np.ndarray,
        kind: np.ndarray,
        topic: np.ndarray,
        sends_7d: np.ndarray,
        last_visit: np.ndarray | None = None,
    ) -> np.ndarray:
        return sigmoid(self.open_logit_at(c, utc_s, kind, topic, sends_7d, last_visit))

    def affinity_effect(self, c: np.ndarray, category: np.ndarray) -> np.ndarray:
        """log(n_categories × affinity), clipped; 0 where there is no category (code -1)."""
        category = np.asarray(category)
        has = category >= 0
        effect = np.log(len(self.categories) * self._affinity[c, np.where(has, category, 0)])
        clip = self.coefficients.affinity_clip
        return np.where(has, np.clip(effect, -clip, clip), 0.0)

    def click_probability_at(self, c: np.ndarray, topic: np.ndarray) -> np.ndarray:
        """P(a person who opened the email clicks in it): more likely on a topic they like, and the keener."""
        return sigmoid(-1.6 + 0.5 * self.affinity_effect(c, topic) + 0.3 * (self._base[c] + 0.7))

    def conversion_probability_at(self, c: np.ndarray, o: np.ndarray, recent: Recent | None = None) -> np.ndarray:
        """Elementwise (broadcast) true conversion probability of customer rows `c` for offer rows `o`; where the
        world has recent activity, as of `recent` (default: each customer's at `end`)."""
        k = self.coefficients
        category = self._offer_category[o]
        logit = (
            self._conversion_base[c]
            + self._lift[o]
            + k.conversion_affinity * self.affinity_effect(c, category)
            + k.conversion_discount * self._price_sensitivity[c] * self._discount[o]
        )
        if self.has_recent_activity:
            now = self.recent_at_end(c) if recent is None else recent
            viewed = (category >= 0) & (now.view_category == category)
            bought = (category >= 0) & (now.purchase_category == category)
            interest = _fading(now.t, now.view, k.viewed_interest_days * DAY)
            satiation = _fading(now.t, now.purchase, k.purchase_satiation_days * DAY)
            logit = logit + np.where(viewed, k.viewed_interest * interest, 0.0)
            logit = logit - np.where(bought, k.purchase_satiation * satiation, 0.0)
        return sigmoid(logit)

    # --- internals -------------------------------------------------------------------------------------
    def _index_customers(self) -> None:
        params = self.customer_params
        self._customer_pos = pd.Index(params["customer_id"].astype(str))
        if not self._customer_pos.is_unique:
            raise ValueError("customer_params has duplicate customer_id values")
        self.zones = tuple(sorted(params["timezone"].unique()))
        self._zone = pd.Index(self.zones).get_indexer(params["timezone"])
        weekday = _matrix(params["weekday_activity"], 24)
        weekend = _matrix(params["weekend_activity"], 24)
        self._profiles = np.stack([weekday, weekend], axis=1)
        self._profile_max = self._profiles.max(axis=2)
        self._affinity = _matrix(params["affinity"], len(self.categories))
        self._base = params["base"].to_numpy(np.float64)
        self._fatigue = params["fatigue"].to_numpy(np.float64)
        self._amplitude = params["hour_amplitude"].to_numpy(np.float64)
        self._price_sensitivity = params["price_sensitivity"].to_numpy(np.float64)
        self._conversion_base = params["conversion_base"].to_numpy(np.float64)
        self._sends7 = params["sends_in_prev_7d"].to_numpy(np.float64)
        self._kind_effect = np.array([self.coefficients.kind_effect[kind] for kind in KINDS])
        self._end_s = float(utc_seconds(self.end)[0])
        self._index_recent()

    def _index_recent(self) -> None:
        params, n = self.customer_params, len(self.customer_params)

        def column(name: str, missing: float) -> np.ndarray:
            if name not in params:
                return np.full(n, missing)
            return params[name].to_numpy(np.float64)

        self._last_visit = column("last_visit_s", np.nan)
        self._last_view = column("last_view_s", np.nan)
        self._view_category = column("last_view_category", -1).astype(np.int64)
        self._last_purchase = column("last_purchase_s", np.nan)
        self._purchase_category = column("last_purchase_category", -1).astype(np.int64)

    def _index_offers(self) -> None:
        offers = self.offer_params
        self._offer_ids = offers["offer_id"].astype(str).to_numpy(dtype=object)
        self._offer_pos = pd.Index(self._offer_ids)
        self._offer_category = pd.Index(self.categories).get_indexer(offers["category"].fillna(""))
        self._discount = offers["discount_pct"].fillna(0.0).to_numpy(np.float64) / 100.0
        self._lift = offers["lift"].to_numpy(np.float64)
        self._margin = offers["margin"].to_numpy(np.float64)

    def _eligible(self) -> np.ndarray:
        offers = self.offer_params
        in_stock = ~(offers["inventory"].fillna(1) <= 0)
        started = offers["starts_at"].isna() | (offers["starts_at"] <= self.end)
        not_ended = offers["ends_at"].isna() | (offers["ends_at"] > self.end)
        return (in_stock & started & not_ended).to_numpy(bool)

    def _kind_codes(self, kind: str | Sequence[str], n: int) -> np.ndarray:
        values = np.full(n, kind, dtype=object) if isinstance(kind, str) else np.asarray(kind, dtype=object)
        codes = pd.Index(KINDS).get_indexer(values)
        if (codes < 0).any():
            raise ValueError(f"unknown kind {values[codes < 0][0]!r}; expected one of {list(KINDS)}")
        return codes

    def _topic_codes(self, topic: str | Sequence[str | None] | None, n: int) -> np.ndarray:
        if topic is None or isinstance(topic, str):
            return np.full(n, self.categories.index(topic) if topic in self.categories else -1)
        values = pd.Series(np.asarray(topic, dtype=object)).fillna("")
        return pd.Index(self.categories).get_indexer(values)

    def _truth_table(self, name: str) -> pd.DataFrame:
        if self.truth_dir is None:
            raise FileNotFoundError(f"this world has not been saved, so it has no {name}")
        return pq.read_table(self.truth_dir / name).to_pandas()


def _matrix(column: pd.Series, width: int) -> np.ndarray:
    """A column of equal-length lists as an [n, width] float array."""
    if len(column) == 0:
        return np.zeros((0, width))
    values = np.stack([np.asarray(v, dtype=np.float64) for v in column])
    if values.shape[1] != width:
        raise ValueError(f"column {column.name!r} holds lists of {values.shape[1]} values, expected {width}")
    return values
