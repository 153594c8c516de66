"""The decision logic behind the HTTP API: champions, online features, curves, offers, modules, renders.

`Engine` holds what is loaded once (boosters, the Feast store, the offers); every method is a plain function
of its request, so everything the service does can be tested without starting it.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from feast import FeatureStore

from features.labels import message_sends
from features.offer_values import TABLE as OFFER_VALUES_TABLE
from features.offer_values import OfferValues
from features.store import open_store
from features.transform import (
    SCALAR_FEATURES,
    CustomerMatrix,
    DesignColumns,
    OfferMatrix,
    feature_names,
    lightgbm_matrix,
    offer_design,
    open_columns,
    open_design,
    rhythm_features,
    set_attribute,
)
from sendwise.raw import load_table
from sendwise.registry import MODEL_NAMES, LoadedModel, load_champions
from sendwise.settings import Settings
from serving.assign import HourPlan, describe_quiet, in_holdout, local_window_clock, plan_hours, quiet
from serving.compiled import warm_up
from serving.curves import CurveScorer, predict, predict_on_one_thread
from serving.modules import (
    ModuleFacts,
    OfferFact,
    check_template,
    choose_modules,
    has_category_picks,
    offer_slots_batch,
    placed_offers,
    planned_modules,
)
from serving.render import render_email
from serving.schemas import (
    Constraints,
    DecideRequest,
    DecideResponse,
    Decision,
    Driver,
    ExplainRequest,
    ExplainResponse,
    Recipient,
    RenderedModule,
    RenderRequest,
    RenderResponse,
)
from serving.snapshot import FeatureSnapshot, release_memory, snapshot_signature

logger = logging.getLogger(__name__)

SNAPSHOT_CHECK_SECONDS = 10.0
"""How often a decision looks whether the feature tables or the registry changed (a new materialization)."""
OFFER_CHUNK = 20_000
"""Customers whose offers are scored per booster call when a snapshot is read."""
OFFER_SETS_KEPT = 256
"""Eligible offer sets remembered (by window start and offer list); all are forgotten when more are asked for."""
SAMPLE_FOR_POPULATION = 400
FALLBACK_OPEN_PROBABILITY = 0.2
TIE_BREAK = 1e-10
"""Weight of the customer's rhythm (24 × share of the day) added to an hour's probability to rank hours the
model rates the same."""
CHECK_CUSTOMERS = 50
CHECK_HOURS = 48
CURVE_TOLERANCE = 1e-9
"""Curves from the tabulated hour part must equal scoring every hour (to rounding) or are not used."""
LITTLE_HISTORY_EVENTS = 5
"""Fewer recent visits and opens than this: the rhythm is mostly the prior of the customer's time zone."""
NANOS_PER_DAY = 86_400 * 10**9
# Marketing email whose lift the global holdout measures; triggered and transactional email is never held out.
HELD_OUT_KINDS = frozenset({"promotional", "newsletter"})
OFFER_MODULES = ("hero_offer", "secondary_offers", "content_block")


def json_lines(records: list[dict[str, object]], first_key: str) -> bytes:
    """One JSON object per line, in one orjson call instead of one per record: the array is split where one
    object ends and the next begins. `},{"<first_key>":` occurs only there (a quote inside a string is
    escaped); every record must start with `first_key`, and a count of the lines checks it."""
    if not records:
        return b""
    key = orjson.dumps(first_key)
    lines = orjson.dumps(records)[1:-1].replace(b"},{" + key + b":", b"}\n{" + key + b":") + b"\n"
    if lines.count(b"\n") != len(records):  # a nested object starting with the same key: one call each
        return b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records)
    return lines


_gc_pauses = 0
_gc_lock = threading.Lock()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a batch is decided (from the first pause to the last resume, across
    threads). A batch allocates 100,000s of dicts, lists and sets without a cycle among them (its features,
    its answer), and every full collection they trigger walks everything the process holds that is not frozen:
    a third of a 10,000-recipient decide."""
    global _gc_pauses
    with _gc_lock:
        _gc_pauses += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                gc.enable()


@dataclass(frozen=True)
class OnlineState:
    """One snapshot of the online features with every known customer's offer scores, swapped as a whole."""

    snapshot: FeatureSnapshot
    offer_table: np.ndarray  # [snapshot rows + 1, catalog offers] float32, NaN where not scored
    offer_columns: dict[str, int]


@dataclass
class Served:
    """A batch's feature rows as the models see them: the request's context overlaid for customers sendwise
    does not know, and only population-level features for those who do not allow profiling."""

    online: OnlineState
    matrix: CustomerMatrix
    rows: np.ndarray  # snapshot rows (its empty row for customers it does not have)
    known: np.ndarray
    profiled: np.ndarray
    consent: np.ndarray
    eligible: np.ndarray
    any_views: np.ndarray  # product views of their own that modules may use
    degraded: bool

    @cached_property
    def history(self) -> dict[str, np.ndarray]:
        """Emails, human opens, clicks and site visits of each row (decayed counts, rounded): what a prediction
        rests on; and whether the customer's opens are hidden behind a privacy proxy (1: they are)."""
        scalars = self.matrix.scalars.astype(np.float64)
        counts = np.rint(np.nan_to_num(scalars, nan=0.0)).astype(int)
        names = ("n_emails", "n_human_opens", "n_clicks", "n_sessions")
        found = {name: counts[:, SCALAR_FEATURES.index(name)] for name in names}
        found["opens_hidden"] = (scalars[:, SCALAR_FEATURES.index("opens_observable")] == 0).astype(int)
        return found


@dataclass
class _Batch:
    """What one decide call computes for all its recipients at once, as plain lists where the per-recipient
    loop reads them (indexing numpy arrays one element at a time is what made that loop slow)."""

    start: datetime
    kind: str
    topic: str | None
    k_offers: int
    explore_share: float
    served: Served
    curves: np.ndarray
    ranked: np.ndarray  # the curves with ties broken by the customer's rhythm: what hours are chosen from
    explore: np.ndarray
    plan: HourPlan
    blocked: list[str | None]
    holdout: np.ndarray
    constraints: Constraints
    zones: list[str]
    offers: pd.DataFrame
    offer_facts: list[tuple[str, str, str | None, float | None]]
    conversion: np.ndarray
    value: np.ndarray
    control: np.ndarray
    excluded: list[np.ndarray]
    logged_values: bool = False
    """The offers' values are the logged ones (no offer model), the same for every row."""
    ranked_offers: list[list[str]] = field(default_factory=list)  # per decision: every offer ranked
    shown_offers: list[list[str]] = field(default_factory=list)  # per decision: those the email carries

    @cached_property
    def ranking(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(offer columns of every row, best first; the incremental value over the control arm, if any)."""
        if not len(self.offers):
            return np.zeros((len(self.zones), 0), dtype=np.int64), None
        incremental = None
        if len(self.control):
            incremental = self.value - self.value[:, self.control].max(axis=1, keepdims=True)
        score = incremental if incremental is not None else self.value
        if self.logged_values and len(score):
            # One ranking shared by every row. Equal values (no conversions logged, or no exposures at all) put an
            # offer before the control arm, then the larger margin first.
            kinds, margins = self.offers["kind"].to_numpy(), self.offers["margin"].to_numpy(dtype=np.float64)
            row = np.lexsort((-margins, kinds == "control", -score[0]))
            return np.broadcast_to(row, score.shape), incremental
        order = np.argsort(-score, axis=1, kind="stable")
        return order, incremental

    @property
    def window_times(self) -> list[tuple[str, str]]:
        """Each hour of the window as the answer writes it (JSON, Z) and as the decision log does (isoformat)."""
        return _window_times(self.start, self.curves.shape[1])


@lru_cache(maxsize=64)
def _window_times(start: datetime, hours: int) -> list[tuple[str, str]]:
    """Formatted once per window: 48 strftime/isoformat calls were 6% of a single-recipient decide. The list
    is shared by every batch of the window and never changed."""
    out = []
    for h in range(hours):
        at = start + timedelta(hours=h)
        out.append((at.strftime("%Y-%m-%dT%H:%M:%SZ"), at.isoformat()))
    return out


@dataclass(frozen=True)
class OfferSet:
    """The offers eligible for one window start, with what scoring and ranking them needs."""

    offers: pd.DataFrame  # with each offer's margin
    matrix: OfferMatrix
    facts: list[tuple[str, str, str | None, float | None]]  # id, kind, category, discount
    margins: np.ndarray  # what a conversion is worth (1 where the catalog gives no margin)
    kinds: np.ndarray

    @property
    def ids(self) -> list[str]:
        return [f[0] for f in self.facts]


def _offer_facts(offers: pd.DataFrame) -> list[tuple[str, str, str | None, float | None]]:
    """Each offer's id, kind, category and discount as plain values."""
    out = []
    for offer in offers.to_dict("records"):
        category, discount = offer.get("category"), offer.get("discount_pct")
        out.append(
            (
                str(offer["offer_id"]),
                str(offer["kind"]),
                None if pd.isna(category) else str(category),  # type: ignore[arg-type]
                None if pd.isna(discount) else float(discount),  # type: ignore[arg-type]
            )
        )
    return out


@dataclass
class Population:
    """What an average known customer looks like to the models, for modules and reasons."""

    open_probability: float
    high_value_threshold: float


def _eligible_offers(offers: pd.DataFrame | None, at: datetime, offer_ids: list[str] | None) -> pd.DataFrame:
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


def _optional_str(value: object) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _nanos(stamp: datetime | pd.Timestamp) -> int:
    return int(pd.Timestamp(stamp).value)


def _nanos_column(times: pd.Series) -> np.ndarray:
    """UTC timestamps (any unit) as int64 nanoseconds since the epoch."""
    return pd.to_datetime(times, utc=True).dt.tz_convert(None).to_numpy().astype("datetime64[ns]").view(np.int64)


@dataclass
class _Timeline:
    """Each customer's event times (ns since the epoch), sorted, with a label per event, in flat arrays."""

    spans: dict[str, tuple[int, int]]
    times: np.ndarray
    labels: np.ndarray

    @classmethod
    def empty(cls) -> _Timeline:
        return cls({}, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object))

    @classmethod
    def build(cls, customers: pd.Series, times: pd.Series, labels: pd.Series | None = None) -> _Timeline:
        if len(customers) == 0:
            return cls.empty()
        codes, names = pd.factorize(customers.astype(str), sort=False)
        stamps = _nanos_column(times)
        order = np.lexsort((stamps, codes))
        codes = codes[order]
        first = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        last = np.r_[first[1:], len(codes)]
        spans = {str(names[codes[a]]): (int(a), int(b)) for a, b in zip(first, last, strict=True)}
        values = labels.astype(object).to_numpy()[order] if labels is not None else np.zeros(len(order), dtype=object)
        return cls(spans, stamps[order], values)

    def _slice(self, customer_id: str, low: int, high: int) -> slice:
        a, b = self.spans.get(customer_id, (0, 0))
        times = self.times[a:b]
        return slice(a + int(np.searchsorted(times, low, "left")), a + int(np.searchsorted(times, high, "left")))

    def count(self, customer_id: str, low: int, high: int) -> int:
        """Events in [low, high)."""
        part = self._slice(customer_id, low, high)
        return part.stop - part.start

    def labels_between(self, customer_id: str, low: int, high: int) -> set[str]:
        return {str(x) for x in self.labels[self._slice(customer_id, low, high)]}


class SendHistory:
    """What each customer was sent and shown: the raw store's sends and offer exposures up to where its data
    ends, then the sends sendwise itself decided (its decision log: `send: true`, at their `send_at`).

    Why both: the ESP's events are what was really sent, but they arrive with the next export; a decision is
    known the moment it is made, and counting it keeps two campaigns decided on the same day from both passing
    a frequency cap. A decision counts only after the raw store ends and only if its decision_id is not among
    the raw sends, so nothing is counted twice once the sends come back. A decided send that the sending system
    dropped still counts: the cap errs on the side of sending less. The raw store is loaded once; the log is
    read as it grows, each file from where it was last read.
    """

    def __init__(
        self,
        decisions_dir: Path,
        sends: _Timeline,
        exposures: _Timeline,
        sends_end: int | None = None,
        exposures_end: int | None = None,
        known_decisions: set[str] | None = None,
    ) -> None:
        self.decisions_dir = decisions_dir
        self.sends = sends
        self.exposures = exposures
        self.sends_end = sends_end
        self.exposures_end = exposures_end
        self.known_decisions = known_decisions or set()
        self._decided: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        self._offsets: dict[Path, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_raw(cls, settings: Settings) -> SendHistory:
        sends, exposures = _Timeline.empty(), _Timeline.empty()
        sends_end = exposures_end = None
        known: set[str] = set()
        events = load_table(settings, "email_events")
        if events is not None and len(events):
            table = message_sends(events)
            sends = _Timeline.build(table["customer_id"], table["send_at"])
            sends_end = int(sends.times.max()) if len(sends.times) else None
            known = set(table["decision_id"].dropna().astype(str))
        offer_events = load_table(settings, "offer_events")
        if offer_events is not None and len(offer_events):
            shown = offer_events[offer_events["event"] == "exposed"]
            exposures = _Timeline.build(shown["customer_id"], shown["occurred_at"], shown["offer_id"])
            exposures_end = int(exposures.times.max()) if len(exposures.times) else None
        return cls(settings.decisions_dir, sends, exposures, sends_end, exposures_end, known)

    def _read_log(self) -> None:
        if not self.decisions_dir.is_dir():
            return
        for path in sorted(self.decisions_dir.glob("*.jsonl")):
            offset = self._offsets.get(path, 0)
            size = path.stat().st_size
            if size <= offset:
                continue
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read(size - offset)
            complete = chunk.rfind(b"\n") + 1
            self._offsets[path] = offset + complete
            for line in chunk[:complete].splitlines():
                self._add_logged(line)

    def _add_logged(self, line: bytes) -> None:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        if not entry.get("send") or not entry.get("send_at") or entry.get("decision_id") in self.known_decisions:
            return
        at = int(datetime.fromisoformat(entry["send_at"]).timestamp()) * 10**9
        shown = entry.get("exposed_offer_ids")
        if shown is None:  # written before the log said which offers the email carried: the top one did
            shown = entry.get("offer_ids", [])[:1]
        self._decided.setdefault(str(entry["customer_id"]), []).append((at, tuple(str(o) for o in shown)))

    def _logged(self, customer_id: str, low: int, high: int, after: int | None) -> list[tuple[str, ...]]:
        return [
            offers
            for at, offers in self._decided.get(customer_id, ())
            if low <= at < high and (after is None or at > after)
        ]

    def sends_before(self, customer_ids: list[str], start: datetime, days: int) -> tuple[np.ndarray, np.ndarray]:
        """(sends in the raw store, sends decided by sendwise since it ends) in the `days` before `start`."""
        high = _nanos(start)
        low = high - days * NANOS_PER_DAY
        with self._lock:
            self._read_log()
            raw = np.array([self.sends.count(c, low, high) for c in customer_ids], dtype=np.int64)
            decided = np.array([len(self._logged(c, low, high, self.sends_end)) for c in customer_ids], dtype=np.int64)
        return raw, decided

    def offers_shown_before(self, customer_ids: list[str], start: datetime, days: int) -> list[set[str]]:
        """The offers each customer was exposed to in the `days` before `start` (raw exposures, then decisions)."""
        high = _nanos(start)
        low = high - days * NANOS_PER_DAY
        with self._lock:
            self._read_log()
            shown = []
            for c in customer_ids:
                offers = self.exposures.labels_between(c, low, high)
                for logged in self._logged(c, low, high, self.exposures_end):
                    offers.update(logged)
                shown.append(offers)
        return shown


class Engine:
    """Champions and features, loaded once; decisions, renders and explanations per request."""

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore | None,
        models: dict[str, LoadedModel],
        offers: pd.DataFrame | None,
        offer_features: pd.DataFrame | None,
        history: SendHistory | None = None,
        rhythm_priors: pd.DataFrame | None = None,
        offer_values: OfferValues | None = None,
    ) -> None:
        self.settings = settings
        self.offer_values = offer_values
        """What each offer earned per exposure in the logged data: how offers are ranked without an offer model."""
        self.rhythm_priors = (
            {}
            if rhythm_priors is None
            else dict(zip(rhythm_priors["timezone"], rhythm_priors.itertuples(), strict=True))
        )
        self.store = store
        self.models = models
        self.offers = offers
        self.offer_features = offer_features
        self.history = history or SendHistory(settings.decisions_dir, _Timeline.empty(), _Timeline.empty())
        self.degraded_reasons: list[str] = []
        self._log_lock = threading.Lock()
        self._rng = np.random.default_rng()
        self._rng_lock = threading.Lock()
        self._scorers: dict[int, CurveScorer | None] = {}  # by booster: its tabulated hour part, or None
        self._scorer_lock = threading.Lock()
        self._online: OnlineState | None = None
        self._offer_sets: dict[tuple[datetime, tuple[str, ...] | None], OfferSet | None] = {}
        self._snapshot_lock = threading.Lock()
        self._snapshot_checked = 0.0
        self._failed_signature: tuple[tuple[str, int], ...] | None = None
        self.refresh_in_background = False
        """When set (the service sets it), a changed feature table is read in a thread of its own while answers
        keep coming from the last snapshot: the service decides small requests on its event loop, which must
        not stop for the seconds (a minute at a million customers) a read takes."""
        self._refreshing: threading.Thread | None = None
        self.population = Population(FALLBACK_OPEN_PROBABILITY, 1.0)
        if store is not None:
            self._refresh_snapshot()
            self.population = self._measure_population()

    def after_fork(self) -> None:
        """In a process forked from the one that loaded this engine (the bulk path's workers): a random stream
        of its own, else every worker draws the same explorations; and predictions on one thread."""
        with self._rng_lock:
            self._rng = np.random.default_rng()
        predict_on_one_thread()

    # --- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, settings: Settings) -> Engine:
        """The champions from MLflow, the Feast store, the offers and the send history of the home."""
        models = load_champions(settings)
        store = open_store(settings) if (settings.feast_dir / "registry.db").exists() else None
        offers = load_table(settings, "offers")
        offer_features = None
        if offers is not None and store is not None and len(offers):
            offer_features = (
                store.get_online_features(
                    features=[
                        f"offer_fv:{c}" for c in ("offer_kind", "offer_category", "discount_pct", "price", "margin")
                    ],
                    entity_rows=[{"offer_id": o} for o in offers["offer_id"]],
                )
                .to_df()
                .reset_index(drop=True)
            )
        priors_path = settings.feature_tables_dir / "rhythm_priors.parquet"
        priors = pd.read_parquet(priors_path) if priors_path.exists() else None
        values = OfferValues.read(settings.feature_tables_dir / f"{OFFER_VALUES_TABLE}.parquet")
        warm_up()  # the compiled tree walk, before any request waits for it
        history = SendHistory.from_raw(settings)
        engine = cls(settings, store, models, offers, offer_features, history, priors, values)
        # What was just loaded (models, Feast, MLflow, the snapshot) lives as long as the process: keep it out
        # of the cycle collector's full passes, which otherwise walk all of it whenever a batch's answer, or a
        # bulk file's recipients, allocate enough to trigger one.
        gc.collect()
        gc.freeze()
        return engine

    def model_versions(self) -> dict[str, str | None]:
        return {name: (self.models[name].version if name in self.models else None) for name in MODEL_NAMES}

    def status(self) -> dict[str, object]:
        reasons = list(self.degraded_reasons)
        for name in MODEL_NAMES:
            if name == "next_best_offer" and name not in self.models:
                reasons.append(f"no champion for {name}: {self._logged_ranking()}")
            elif name not in self.models:
                reasons.append(f"no champion for {name}: answers use population priors")
        if self.store is None:
            reasons.append("no feature store in the home: run `sendwise pipeline --data DIR`")
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "models": self.model_versions(),
        }

    # --- features --------------------------------------------------------------------------------
    def _refresh_snapshot(self) -> None:
        """Load the online features (and score every known customer's offers) when the Feast sources or the
        registry changed since the snapshot was read; a failed read keeps the old snapshot and says so."""
        assert self.store is not None
        with self._snapshot_lock:
            self._snapshot_checked = time.monotonic()
            signature = snapshot_signature(self.settings)
            current = self._online
            if signature == self._failed_signature or (current is not None and signature == current.snapshot.signature):
                return
            try:
                snapshot = FeatureSnapshot.load(self.store, self.settings)
                table, columns = self._score_offers(snapshot)
            except Exception as error:  # an unreadable store degrades the answers, never fails them
                logger.exception("reading the online features failed; answers come from the last snapshot read")
                self.degraded_reasons = [f"online features unavailable: {type(error).__name__}: {error}"]
                self._failed_signature = signature  # tried again once the files change
                return
            self._failed_signature = None
            self._online = OnlineState(snapshot, table, columns)
            del current  # the old snapshot goes now, not at the next request
            release_memory()
            self.degraded_reasons = []

    def _current_online(self) -> OnlineState | None:
        if self.store is not None and time.monotonic() - self._snapshot_checked > SNAPSHOT_CHECK_SECONDS:
            if not self.refresh_in_background:
                self._refresh_snapshot()
            elif self._refreshing is None or not self._refreshing.is_alive():
                self._snapshot_checked = time.monotonic()  # one check at a time
                self._refreshing = threading.Thread(target=self._refresh_snapshot, name="snapshot", daemon=True)
                self._refreshing.start()
        return self._online

    def wait_for_refresh(self, timeout: float | None = None) -> None:
        """Until a background read of the online features (if one runs) is done: for tests and tools."""
        if self._refreshing is not None:
            self._refreshing.join(timeout)

    def _served(self, recipients: list[Recipient]) -> Served:
        """The recipients' feature rows as the models see them."""
        online = self._current_online()
        ids = [r.customer_id for r in recipients]
        if online is None:
            empty = FeatureSnapshot.empty()
            online = OnlineState(empty, np.zeros((1, 0), dtype=np.float32), {})
            return self._serve(online, ids, empty.rows(ids), recipients, degraded=True)
        return self._serve(online, ids, online.snapshot.rows(ids), recipients, degraded=bool(self.degraded_reasons))

    def _serve(
        self,
        online: OnlineState,
        ids: list[str],
        rows: np.ndarray,
        recipients: list[Recipient] | None,
        degraded: bool = False,
    ) -> Served:
        """Snapshot rows with the request's context for unknown customers (time zone, interests, attributes),
        and, for everyone without profiling consent, their zone's rhythm in place of their own history."""
        snapshot = online.snapshot
        known = snapshot.known[rows]
        profiled = known & (snapshot.consent["profiling_allowed"][rows] > 0)
        unknown = np.flatnonzero(~known)
        blank = np.flatnonzero(~profiled)
        matrix = snapshot.matrix(ids, rows, blank=blank)  # no engagement features for them
        if recipients is not None and len(unknown):
            attributes = matrix.attributes
            for i in unknown:
                recipient = recipients[i]
                matrix.timezone[i] = recipient.timezone or "UTC"
                matrix.interests[i] = {s.strip().lower() for s in "|".join(recipient.interests).split("|") if s.strip()}
                for name, value in recipient.attributes.items():
                    if name in attributes:
                        set_attribute(attributes, name, i, value)
        matrix.timezone[unknown] = [z if isinstance(z, str) and z else "UTC" for z in matrix.timezone[unknown]]
        if len(blank):
            for i in blank:
                matrix.category_names[i] = []
                matrix.category_views[i] = np.zeros(0, dtype=np.float32)
            self._pool_rhythms(matrix, blank)
        return Served(
            online=online,
            matrix=matrix,
            rows=rows,
            known=known,
            profiled=profiled,
            consent=snapshot.consent["consent_email"][rows] > 0,
            eligible=snapshot.consent["email_eligible"][rows] > 0,
            any_views=profiled & (snapshot.views[rows] > 0).any(axis=1),
            degraded=degraded,
        )

    def _pool_rhythms(self, matrix: CustomerMatrix, pooled: np.ndarray) -> None:
        """Customers without their own history (unknown, or no profiling consent) get their zone's rhythm, or a
        flat day where no zone prior exists: never their own."""
        for day in ("weekday", "weekend"):
            profile = matrix.profiles[f"rhythm_{day}"]
            profile[pooled] = 0.0
            for zone in np.unique(matrix.timezone[pooled]):
                prior = self.rhythm_priors.get(zone) or self.rhythm_priors.get("")
                if prior is not None:
                    profile[pooled[matrix.timezone[pooled] == zone]] = np.asarray(getattr(prior, day), np.float32)

    @staticmethod
    def _history_reason(emails: int, opens: int, visits: int, zone: str, clicks: int = 0, hidden: bool = False) -> str:
        """How much of the customer's own history the prediction rests on (decayed counts, rounded)."""
        if hidden:
            reason = (
                "this customer's opens come through a privacy proxy and say nothing of whether they read: the "
                f"prediction rests on {emails} past emails, {clicks} clicks and {visits} site visits of theirs"
            )
            reads = clicks
        else:
            reads = opens
            reason = (
                f"prediction rests on {emails} past emails, {opens} human opens and {visits} site visits of this "
                "customer"
            )
        if visits + reads < LITTLE_HISTORY_EVENTS:
            reason += f" (little history: the send time leans on the daily rhythm of customers in {zone})"
        return reason

    # --- predictions -----------------------------------------------------------------------------
    def _curves(self, matrix: CustomerMatrix, start: datetime, hours: int, kind: str, topic: str | None) -> np.ndarray:
        return self._ranked_curves(matrix, start, hours, kind, topic)[0]

    def _ranked_curves(
        self, matrix: CustomerMatrix, start: datetime, hours: int, kind: str, topic: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """[n, hours] open probabilities, and the same with ties broken by the customer's rhythm at each hour
        (what the send time is chosen from).

        A tree model's hour part is a step function of the rhythm: the hours around a customer's peak often get
        exactly the same probability, and the first of them (the earliest) would be chosen. Among hours the model
        rates the same, the one where the customer is most around comes first instead (a millionth of a
        percentage point per unit of rhythm, far below any difference the model makes)."""
        n = len(matrix)
        model = self.models.get("send_time") or self.models.get("open_propensity")
        hour_features = self._hour_features(matrix, np.arange(n), start, hours)
        tiebreak = TIE_BREAK * hour_features["rhythm_at_hour"].reshape(n, hours).astype(np.float64)
        if model is None or n == 0:
            curves = np.full((n, hours), FALLBACK_OPEN_PROBABILITY)
            return curves, curves + tiebreak
        columns = open_columns(
            matrix, np.arange(n), pd.Timestamp(start), np.full(n, kind), np.full(n, topic, dtype=object)
        )
        scorer = self._curve_scorer(model, columns, matrix, start, kind, topic)
        if scorer is not None:
            first = lightgbm_matrix(columns, model.booster)
            curves = scorer.curves(columns.frame() if first is None else first, hour_features, hours)
        else:
            design = self._window_design(matrix, np.arange(n), start, hours, kind, topic)
            curves = predict(model.booster, design[feature_names(model.booster)]).reshape(n, hours)
        curves = np.clip(curves, 0.0, 1.0)
        return curves, curves + tiebreak

    @staticmethod
    def _hour_features(
        matrix: CustomerMatrix, customers: np.ndarray, start: datetime, hours: int
    ) -> dict[str, np.ndarray]:
        """The hour features of every (customer, hour of the window), row-major: what the hour table looks up."""
        hour, weekday = local_window_clock(start, hours, matrix.timezone[customers])
        rows = np.repeat(customers, hours)
        return {
            **rhythm_features(matrix, rows, hour.ravel(), weekday.ravel() >= 5),
            "local_weekday": weekday.ravel(),
        }

    @staticmethod
    def _window_design(
        matrix: CustomerMatrix, customers: np.ndarray, start: datetime, hours: int, kind: str, topic: str | None
    ) -> pd.DataFrame:
        """A design row per (customer, hour of the window): what the booster would score hour by hour."""
        rows = np.repeat(customers, hours)
        stamps = pd.date_range(start, periods=hours, freq="h", tz=UTC)
        times = pd.Series(np.tile(stamps.tz_convert(None).to_numpy(), len(customers))).dt.tz_localize("UTC")
        return open_design(matrix, rows, times, np.full(len(rows), kind), np.full(len(rows), topic, dtype=object))

    def _curve_scorer(
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
        with self._scorer_lock:
            if key not in self._scorers:
                first = columns.frame()
                scorer = CurveScorer.build(model.booster, first.iloc[:1])
                sample = np.arange(min(len(first), CHECK_CUSTOMERS))
                features = self._hour_features(matrix, sample, start, CHECK_HOURS)
                full = self._window_design(matrix, sample, start, CHECK_HOURS, kind, topic)
                gap = scorer.check(full, first.iloc[sample], features)
                # A champion whose hour features interact with the rest is scored hour by hour.
                self._scorers[key] = scorer if gap <= CURVE_TOLERANCE else None
        return self._scorers[key]

    def _offer_scores(
        self, served: Served, at: datetime, offer_ids: list[str] | None
    ) -> tuple[OfferSet | None, np.ndarray]:
        """(eligible offers, conversion probability [customers, offers]): looked up for known customers (scored
        when the snapshot was read), scored now for the others (their context comes with the request)."""
        model = self.models.get("next_best_offer")
        if model is None:
            return self._logged_offer_scores(served, at, offer_ids)
        if self.offer_features is None:
            return None, np.zeros((len(served.matrix), 0))
        chosen = self._offer_set(at, offer_ids)
        if chosen is None:
            return None, np.zeros((len(served.matrix), 0))
        online = served.online
        columns = np.array([online.offer_columns.get(o, -1) for o in chosen.ids], dtype=np.int64)
        if len(columns) and (columns >= 0).all():
            conversion = online.offer_table[served.rows][:, columns].astype(np.float64)
            missing = np.flatnonzero(~served.known | np.isnan(conversion).any(axis=1))
        else:
            conversion = np.zeros((len(served.matrix), len(chosen.ids)))
            missing = np.arange(len(served.matrix))
        if len(missing):
            conversion[missing] = self._offer_probabilities(served.matrix, missing, chosen.matrix, model)
        return chosen, np.clip(conversion, 0.0, 1.0)

    def _logged_offer_scores(
        self, served: Served, at: datetime, offer_ids: list[str] | None
    ) -> tuple[OfferSet | None, np.ndarray]:
        """Without an offer model: every recipient gets each eligible offer's logged conversion rate (inverse-
        propensity weighted, shrunk toward the mean over offers: `features.offer_values`), one row shared by all."""
        n = len(served.matrix)
        chosen = self._offer_set(at, offer_ids)
        if chosen is None:
            return None, np.zeros((n, 0))
        rates = self.offer_values.rates_of(chosen.ids) if self.offer_values is not None else np.zeros(len(chosen.ids))
        return chosen, np.broadcast_to(np.clip(rates, 0.0, 1.0), (n, len(rates)))

    def _logged_ranking(self) -> str:
        """How offers are ranked without an offer model, in plain words."""
        values = self.offer_values
        if values is None:
            return (
                "offers are ranked by margin (what a conversion is worth): the home has no table of what each offer "
                "earned in the logged data (`sendwise pipeline` or `sendwise train` builds it)"
            )
        if values.exposures == 0:
            return (
                "offers are ranked by margin (what a conversion is worth): no offer exposure in the logged data has "
                "a closed conversion window, and conversion probabilities are unknown (given as 0)"
            )
        if values.conversions == 0:
            return (
                f"offers are ranked by margin (what a conversion is worth): none of the {values.exposures:,} logged "
                "offer exposures converted"
            )
        how = "inverse-propensity weighted, shrunk toward the mean" if values.weighted else "shrunk toward the mean"
        return (
            f"offers are ranked by what each earned per exposure in the logged data ({how}; {values.exposures:,} "
            f"exposures, {values.conversions:,} conversions)"
        )

    def _offer_notes(self, batch: _Batch) -> list[str]:
        """Why a decision's offers are what they are, where no model ranked them or none could be ranked."""
        if batch.k_offers <= 0:
            return []
        if batch.offers.empty:
            if self.offers is None or not len(self.offers):
                return ["no offers in the data: ingest an offers table to have offers ranked"]
            return ["no offer is eligible for this window: each is outside its dates, out of stock or not asked for"]
        if "next_best_offer" in self.models:
            return []
        notes = [f"no offer model is trained yet, so {self._logged_ranking()}"]
        unseen = self.offer_values.never_exposed(batch.offers["offer_id"].tolist()) if self.offer_values else []
        if unseen:
            notes.append(f"never exposed in the logged data, so given the mean over offers: {', '.join(unseen)}")
        return notes

    def _offer_set(self, at: datetime, offer_ids: list[str] | None) -> OfferSet | None:
        """The offers eligible at `at` (among `offer_ids`), converted once per window start and list."""
        key = (at, None if offer_ids is None else tuple(offer_ids))
        found = self._offer_sets.get(key)
        if found is not None or key in self._offer_sets:
            return found
        eligible = _eligible_offers(self.offers, at, offer_ids)
        chosen = None
        if not eligible.empty:
            matrix = self._offer_matrix(eligible["offer_id"])
            eligible = eligible.assign(margin=matrix.margin)
            margins = eligible["margin"].fillna(1.0).to_numpy(dtype=np.float64)
            chosen = OfferSet(eligible, matrix, _offer_facts(eligible), margins, eligible["kind"].to_numpy())
        if len(self._offer_sets) >= OFFER_SETS_KEPT:
            self._offer_sets.clear()
        self._offer_sets[key] = chosen
        return chosen

    def _offer_matrix(self, offer_ids: pd.Series) -> OfferMatrix:
        if self.offer_features is not None:
            rows = self.offer_features
        else:  # no feature store: the catalog's own columns (only the logged values rank offers then)
            assert self.offers is not None
            rows = self.offers.rename(columns={"kind": "offer_kind", "category": "offer_category"})
        return OfferMatrix.from_rows(rows.set_index("offer_id").loc[offer_ids].reset_index())

    @staticmethod
    def _offer_probabilities(
        matrix: CustomerMatrix, rows: np.ndarray, offers: OfferMatrix, model: LoadedModel
    ) -> np.ndarray:
        """[rows, offers]: the next-best-offer model on every (customer row, offer)."""
        n, m = len(rows), len(offers)
        design = offer_design(matrix, np.repeat(rows, m), offers, np.tile(np.arange(m), n))
        booster = model.booster
        return predict(booster, design[feature_names(booster)]).reshape(n, m)

    def _score_offers(self, snapshot: FeatureSnapshot) -> tuple[np.ndarray, dict[str, int]]:
        """Every known customer's conversion probability for every offer of the catalog, scored once per
        snapshot in chunks: the offer model reads no request context, so a decision looks its offers up."""
        model = self.models.get("next_best_offer")
        if model is None or self.offer_features is None or self.offers is None or not len(self.offers):
            return np.zeros((len(snapshot) + 1, 0), dtype=np.float32), {}
        offers = self._offer_matrix(self.offers["offer_id"])
        table = np.full((len(snapshot) + 1, len(offers)), np.nan, dtype=np.float32)
        known = np.flatnonzero(snapshot.known)
        ids = snapshot.index.to_numpy()
        for first in range(0, len(known), OFFER_CHUNK):
            rows = known[first : first + OFFER_CHUNK]
            served = self._serve(OnlineState(snapshot, table, {}), ids[rows].tolist(), rows, None)
            table[rows] = self._offer_probabilities(served.matrix, np.arange(len(rows)), offers, model)
        return table, {str(o): j for j, o in enumerate(offers.offer_id)}

    def _measure_population(self) -> Population:
        """Mean best-hour open probability and the median best offer value of a sample of known customers."""
        customers = load_table(self.settings, "customers")
        if customers is None or customers.empty or "open_propensity" not in self.models:
            return Population(FALLBACK_OPEN_PROBABILITY, 1.0)
        sample = customers["customer_id"].sample(
            n=min(SAMPLE_FOR_POPULATION, len(customers)), random_state=self.settings.seed
        )
        served = self._served([Recipient(customer_id=c) for c in sample])
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        curves = self._curves(served.matrix, start, 24, "promotional", None)
        _, probability = self._offer_scores(served, start, None)
        threshold = 1.0
        eligible = _eligible_offers(self.offers, start, None)
        if probability.size:
            values = probability * eligible["margin"].fillna(1.0).to_numpy()[None, :]
            threshold = float(np.median(values.max(axis=1)))
        return Population(float(curves.max(axis=1).mean()), threshold)

    # --- decisions -------------------------------------------------------------------------------
    def decide(self, request: DecideRequest) -> DecideResponse:
        """The answer of `/v1/decide` as a model (the service sends `decide_payload` encoded as it is)."""
        return DecideResponse.model_validate(self.decide_payload(request))

    def decide_json(self, request: DecideRequest) -> bytes:
        """The answer of `/v1/decide`, encoded: what the service and the bulk path send."""
        with collector_paused():  # until the answer is bytes: its objects are gone before a collection runs
            return orjson.dumps(self._decide_payload(request))

    def decide_payload(self, request: DecideRequest) -> dict[str, object]:
        """One decision per recipient, in request order, as plain data in the shape of `DecideResponse`."""
        with collector_paused():
            return self._decide_payload(request)

    def _decide_payload(self, request: DecideRequest) -> dict[str, object]:
        start = request.resolved_window_start()
        kind, topic = request.campaign.kind, request.campaign.topic
        constraints = request.constraints or Constraints()
        explore_share = self.settings.explore_share if request.explore_share is None else request.explore_share
        served = self._served(request.recipients)
        matrix, known = served.matrix, served.known
        chosen, conversion = self._offer_scores(served, start, request.offer_ids)
        offers = chosen.offers if chosen is not None else pd.DataFrame()
        margins = chosen.margins if chosen is not None else np.zeros(0)
        kinds = chosen.kinds if chosen is not None else np.zeros(0, dtype=object)
        n, hours = len(request.recipients), request.window_hours
        ids = [r.customer_id for r in request.recipients]
        zones = matrix.timezone.tolist()
        curves, ranked = self._ranked_curves(matrix, start, hours, kind, topic)
        holdout = in_holdout(ids, self.settings.holdout_share)
        # Consent and eligibility first (`_decision` answers those in their own shape), then the constraints.
        blocked: list[str | None] = [
            "no consent" if k and not c else "not eligible" if k and not e else None
            for k, c, e in zip(known.tolist(), served.consent.tolist(), served.eligible.tolist(), strict=True)
        ]
        if kind in HELD_OUT_KINDS:
            self._block_holdout(blocked, holdout, kind)
        if constraints.frequency_cap is not None:
            self._block_frequency(blocked, ids, start, constraints)
        allowed = self._allowed_hours(blocked, start, hours, zones, constraints)
        sendable = np.array([b is None for b in blocked], dtype=bool)
        with self._rng_lock:
            explore = self._rng.random(n) < explore_share
            hour_draws = self._rng.random(n)
        plan = plan_hours(ranked, allowed, sendable, explore, hour_draws, explore_share, constraints.max_share_per_hour)
        batch = _Batch(
            start=start,
            kind=kind,
            topic=topic,
            k_offers=request.k_offers,
            explore_share=explore_share,
            served=served,
            curves=curves,
            ranked=ranked,
            explore=explore & sendable & (plan.hours >= 0),
            plan=plan,
            blocked=blocked,
            holdout=holdout,
            constraints=constraints,
            zones=zones,
            offers=offers,
            offer_facts=chosen.facts if chosen is not None else [],
            conversion=conversion,
            value=conversion * margins[None, :],
            control=np.flatnonzero(kinds == "control") if self._values_known() else np.zeros(0, dtype=np.int64),
            excluded=self._repeated_offers(ids, offers, start, constraints.no_repeat_offer_days, sendable),
            logged_values="next_best_offer" not in self.models,
        )
        decisions = self._decisions(batch, request.recipients)
        self._log_decisions(decisions, request, batch, dict(batch.window_times))
        return {
            "model_versions": self.model_versions(),
            "status": "degraded" if served.degraded else "ok",
            "decisions": decisions,
        }

    def _values_known(self) -> bool:
        """Whether offers have conversion probabilities (a model, or logged exposures): without, no incremental
        value over the control arm can be told."""
        if "next_best_offer" in self.models:
            return True
        return self.offer_values is not None and self.offer_values.prior_rate is not None

    @staticmethod
    def _allowed_hours(
        blocked: list[str | None], start: datetime, hours: int, zones: list[str], constraints: Constraints
    ) -> np.ndarray:
        """[n, hours]: the hours outside each recipient's local quiet hours; blocks those left with none."""
        if constraints.quiet_hours is None:
            return np.ones((len(zones), hours), dtype=bool)
        q = constraints.quiet_hours
        allowed = ~quiet(local_window_clock(start, hours, zones)[0], q.start, q.end)
        for i in np.flatnonzero(~allowed.any(axis=1)):
            if blocked[i] is None:
                blocked[i] = (
                    f"quiet hours {describe_quiet(q.start, q.end)} in {zones[i]} leave no hour "
                    f"of the {hours}-hour window"
                )
        return allowed

    def _block_holdout(self, blocked: list[str | None], holdout: np.ndarray, kind: str) -> None:
        share = self.settings.holdout_share
        for i in np.flatnonzero(holdout):
            if blocked[i] is None:
                blocked[i] = (
                    f"in the global holdout ({share:.1%} of customers, chosen stably by customer id): "
                    f"never sent {kind} email, so that the realized lift of sending can be measured"
                )

    def _block_frequency(
        self, blocked: list[str | None], ids: list[str], start: datetime, constraints: Constraints
    ) -> None:
        cap = constraints.frequency_cap
        assert cap is not None
        rows = [i for i, b in enumerate(blocked) if b is None]
        raw, decided = self.history.sends_before([ids[i] for i in rows], start, cap.days)
        for i, from_raw, from_log in zip(rows, raw, decided, strict=True):
            total = int(from_raw + from_log)
            if total >= cap.emails:
                blocked[i] = (
                    f"frequency cap reached: {total} emails in the {cap.days} days before the window "
                    f"({from_raw} sent per the ESP's events, {from_log} decided by sendwise since they end), "
                    f"cap {cap.emails} in {cap.days} days"
                )

    def _repeated_offers(
        self, ids: list[str], offers: pd.DataFrame, start: datetime, days: int | None, sendable: np.ndarray
    ) -> list[np.ndarray]:
        """Per recipient, the columns of the (non-control) offers shown to them within `days` before `start`."""
        none = np.zeros(0, dtype=np.int64)
        if days is None or offers.empty:
            return [none] * len(ids)
        column = {str(o): j for j, o in enumerate(offers["offer_id"])}
        control = set(offers.loc[offers["kind"] == "control", "offer_id"].astype(str))
        rows = np.flatnonzero(sendable)
        shown = self.history.offers_shown_before([ids[i] for i in rows], start, days)
        excluded = [none] * len(ids)
        for i, seen in zip(rows, shown, strict=True):
            excluded[i] = np.array(sorted(column[o] for o in seen if o in column and o not in control), dtype=np.int64)
        return excluded

    def _decisions(self, batch: _Batch, recipients: list[Recipient]) -> list[dict[str, object]]:
        """Every recipient's decision as plain data. What varies by row is computed for the whole batch first,
        as arrays turned into lists; the loop only picks from them and writes the reasons."""
        n = len(recipients)
        served, plan, curves = batch.served, batch.plan, batch.curves
        everyone = np.arange(n)
        curve_lists = curves.tolist()
        chosen_hours, best_hours = plan.hours.tolist(), plan.best.tolist()
        chosen_p = curves[everyone, np.maximum(plan.hours, 0)].tolist() if n else []
        best_p = curves[everyone, np.maximum(plan.best, 0)].tolist() if n else []
        mean_p = curves.mean(axis=1).tolist() if curves.shape[1] else [0.0] * n
        overall = batch.ranked.argmax(axis=1).tolist() if curves.shape[1] else [0] * n
        overall_p = curves.max(axis=1).tolist() if curves.shape[1] else [0.0] * n
        emails = served.history["n_emails"].tolist()
        opens, visits = served.history["n_human_opens"].tolist(), served.history["n_sessions"].tolist()
        clicks, hidden = served.history["n_clicks"].tolist(), served.history["opens_hidden"].tolist()
        known, profiled = served.known.tolist(), served.profiled.tolist()
        consent, eligible = served.consent.tolist(), served.eligible.tolist()
        holdout, explore = batch.holdout.tolist(), batch.explore.tolist()
        propensity = plan.propensity.tolist()
        categories = [
            has_category_picks(not k, batch.topic, list(interests), views)
            for k, interests, views in zip(known, served.matrix.interests, served.any_views.tolist(), strict=True)
        ]
        order, incremental = batch.ranking
        k = max(batch.k_offers, 0)
        top = order[:, :k]
        width = top.shape[1]
        # Every row's ranked offers as flat lists, and their answer objects made in one pass (a comprehension
        # per recipient was a sixth of a campaign's decide); each decision takes its slice.
        offer_ids = np.array([f[0] for f in batch.offer_facts] or [""], dtype=object)
        offer_kinds = np.array([f[1] for f in batch.offer_facts] or [""], dtype=object)
        ids_2d, kinds_2d = offer_ids[top], offer_kinds[top]
        value_2d = np.take_along_axis(batch.value, top, axis=1)
        top_ids, top_kinds, value = ids_2d.ravel().tolist(), kinds_2d.ravel().tolist(), value_2d.ravel().tolist()
        ranked_all = [
            {
                "offer_id": offer_id,
                "kind": offer_kind,
                "conversion_probability": p,
                "expected_value": v,
                "incremental_value": g,
            }
            for offer_id, offer_kind, p, v, g in zip(
                top_ids,
                top_kinds,
                np.take_along_axis(batch.conversion, top, axis=1).ravel().tolist(),
                value,
                np.take_along_axis(incremental, top, axis=1).ravel().tolist()
                if incremental is not None
                else [None] * len(top_ids),
                strict=True,
            )
        ]
        facts = batch.offer_facts
        notes = []
        if "open_propensity" not in self.models and "send_time" not in self.models:
            notes.append("no open model trained yet: a flat population prior, every hour alike")
        notes.extend(self._offer_notes(batch))
        template = "newsletter" if batch.kind == "newsletter" else "promotional"
        threshold = max(self.population.high_value_threshold, 0.0)
        population = self.population.open_probability
        # Where each row's offers go in the email, for the whole ranking at once (rows that leave offers out
        # are placed one by one, from the offers left).
        hero, secondary, content = offer_slots_batch(kinds_2d, value_2d, template, threshold)
        hero_ids = np.where(hero >= 0, ids_2d[everyone, np.maximum(hero, 0)], None).tolist() if width else [None] * n
        secondary_ids, content_ids = ids_2d[secondary].tolist(), ids_2d[content].tolist()
        secondary_at = [0, *np.cumsum(secondary.sum(axis=1)).tolist()]
        content_at = [0, *np.cumsum(content.sum(axis=1)).tolist()]
        stamps = batch.window_times
        ids = os.urandom(16 * n).hex()
        out: list[dict[str, object]] = []
        for i, recipient in enumerate(recipients):
            decision_id = f"d-{ids[32 * i : 32 * i + 32]}"
            reason = None
            scored = True
            if known[i] and not consent[i]:
                reason, scored = "no email consent: never scheduled, rendered or offered anything", False
            elif known[i] and not eligible[i]:
                reason = "no longer eligible for sends: unsubscribed, complained or hard-bounced"
            elif batch.blocked[i] is not None or chosen_hours[i] < 0:
                reason = batch.blocked[i] or self._no_room_reason(batch)
            if reason is not None:
                batch.ranked_offers.append([])
                batch.shown_offers.append([])
                out.append(
                    {
                        "customer_id": recipient.customer_id,
                        "decision_id": decision_id,
                        "send": False,
                        "send_at": None,
                        "open_probability": None,
                        "hourly_open_probability": curve_lists[i] if scored else [],
                        "explore": False,
                        "propensity": 1.0,
                        "offers": [],
                        "modules": [],
                        "cold_start": False,
                        "history_emails": emails[i],
                        "holdout": holdout[i],
                        "reasons": [reason],
                    }
                )
                continue
            chosen = chosen_hours[i]
            if not known[i]:
                reasons = [
                    "unknown customer: no history of their own; open probability from similar customers (the "
                    "context given: time zone, interests, attributes), send time from the daily rhythm of customers "
                    "in " + (recipient.timezone if recipient.timezone else "UTC (no time zone given)")
                ]
            elif not profiled[i]:
                reasons = ["profiling consent not given: population-level predictions only"]
            else:
                reasons = [
                    self._history_reason(emails[i], opens[i], visits[i], batch.zones[i], clicks[i], bool(hidden[i]))
                ]
            reasons.extend(notes)
            if holdout[i]:
                reasons.append(f"in the global holdout, but {batch.kind} email is never held out")
            reasons.extend(
                self._hour_reasons(
                    batch, i, chosen, best_hours[i], (chosen_p[i], best_p[i], mean_p[i]), overall[i], overall_p[i]
                )
            )
            lo, hi = i * width, (i + 1) * width
            ranked_ids, ranked_kinds, ranked_value = top_ids[lo:hi], top_kinds[lo:hi], value[lo:hi]
            ranked = ranked_all[lo:hi]
            slots = (
                hero_ids[i],
                secondary_ids[secondary_at[i] : secondary_at[i + 1]],
                content_ids[content_at[i] : content_at[i + 1]],
            )
            if len(batch.excluded[i]):
                left_out = set(batch.excluded[i].tolist())
                columns = [j for j in order[i].tolist() if j not in left_out][:k]
                ranked_ids, ranked_kinds = [facts[j][0] for j in columns], [facts[j][1] for j in columns]
                ranked_value = [float(batch.value[i, j]) for j in columns]
                ranked = [
                    {
                        "offer_id": facts[j][0],
                        "kind": facts[j][1],
                        "conversion_probability": float(batch.conversion[i, j]),
                        "expected_value": float(batch.value[i, j]),
                        "incremental_value": float(incremental[i, j]) if incremental is not None else None,
                    }
                    for j in columns
                ]
                names = ", ".join(facts[j][0] for j in sorted(left_out))
                days = batch.constraints.no_repeat_offer_days
                reasons.append(f"left out, shown to this customer in the {days} days before the window: {names}")
                slots = placed_offers(ranked_ids, ranked_kinds, ranked_value, template, threshold)
            if ranked_kinds and ranked_kinds[0] == "control":
                reasons.append("no offer adds value over sending none for this customer")
            modules = planned_modules(
                template,
                *slots,
                cold_start=not known[i],
                history_emails=emails[i],
                open_probability=chosen_p[i],
                population_open_probability=population,
                has_categories=categories[i],
            )
            batch.ranked_offers.append(ranked_ids)
            batch.shown_offers.append([item for name, items in modules if name in OFFER_MODULES for item in items])
            out.append(
                {
                    "customer_id": recipient.customer_id,
                    "decision_id": decision_id,
                    "send": True,
                    "send_at": stamps[chosen][0],
                    "open_probability": chosen_p[i],
                    "hourly_open_probability": curve_lists[i],
                    "explore": explore[i],
                    "propensity": propensity[i],
                    "offers": ranked,
                    "modules": [name for name, _ in modules],
                    "cold_start": not known[i],
                    "history_emails": emails[i],
                    "holdout": holdout[i],
                    "reasons": reasons,
                }
            )
        return out

    @staticmethod
    def _no_room_reason(batch: _Batch) -> str:
        return (
            f"per-hour cap: at most {batch.plan.capacity} of this batch's sends per hour, and every allowed hour "
            "of the window is full"
        )

    @staticmethod
    def _hour_reasons(
        batch: _Batch,
        i: int,
        chosen: int,
        best: int,
        probabilities: tuple[float, float, float],
        overall: int,
        overall_p: float,
    ) -> list[str]:
        """Why this hour: the best (allowed) one, an exploration, or where the per-hour cap moved the send.
        `probabilities`: the open probability at the chosen hour, at the best allowed hour, and on average."""
        chosen_p, best_p, mean_p = probabilities
        plan, constraints = batch.plan, batch.constraints
        quiet_hours = constraints.quiet_hours
        outside = (
            f" outside quiet hours {describe_quiet(quiet_hours.start, quiet_hours.end)} ({batch.zones[i]} time)"
            if quiet_hours is not None
            else ""
        )
        reasons = []
        if batch.explore[i]:
            reasons.append(
                f"exploration: a random hour{outside} for {batch.explore_share:.0%} of recipients, to keep learning"
            )
        elif chosen == best:
            reasons.append(
                f"best hour of the window{outside}: {best_p:.1%} open probability vs {mean_p:.1%} on average"
            )
            if overall != best:
                reasons.append(
                    f"the best hour of all, {batch.start + timedelta(hours=overall):%H:00} UTC ({overall_p:.1%}), "
                    "is quiet"
                )
        else:
            at = batch.start + timedelta(hours=chosen)
            was = batch.start + timedelta(hours=best)
            reasons.append(
                f"moved by the per-hour cap (at most {plan.capacity} of this batch's sends per hour) from "
                f"{was:%Y-%m-%d %H:00} UTC ({best_p:.1%}) to {at:%Y-%m-%d %H:00} UTC ({chosen_p:.1%}): "
                f"costs {100 * (best_p - chosen_p):.2f} points of open probability"
            )
        if plan.capacity is not None and batch.explore_share > 0:
            reasons.append(
                "propensity approximate: under the per-hour cap the hour the policy gives depends on the batch"
            )
        return reasons

    def _facts(
        self,
        i: int,
        recipient: Recipient,
        matrix: CustomerMatrix,
        open_probability: float,
        offers: list[OfferFact],
        kind: str,
        topic: str | None,
        cold: bool,
        emails: int,
    ) -> ModuleFacts:
        views = matrix.category_views[i]
        total = float(views.sum()) if len(views) else 0.0
        affinity = (
            {n: float(v) / total for n, v in zip(matrix.category_names[i], views, strict=False) if v > 0}
            if total > 0
            else {}
        )
        return ModuleFacts(
            customer_id=recipient.customer_id,
            campaign_kind=kind,
            campaign_topic=topic,
            open_probability=open_probability,
            population_open_probability=self.population.open_probability,
            offers=offers,
            high_value_threshold=max(self.population.high_value_threshold, 0.0),
            category_affinity=affinity,
            interests=sorted(matrix.interests[i]),
            cold_start=cold,
            history_emails=emails,
        )

    def _log_decisions(
        self,
        decisions: list[dict[str, object]],
        request: DecideRequest,
        batch: _Batch,
        logged_times: dict[str, str],
    ) -> None:
        """Append every decision (with its exploration flag and propensity) to the day's decision log.

        `exposed_offer_ids` are the offers the email's modules carry (what a no-repeat rule counts as shown);
        `offer_ids` the whole ranking.
        """
        now = datetime.now(UTC)
        decided_at = now.isoformat()
        campaign = request.campaign.model_dump()
        versions = self.model_versions()
        path = self.settings.decisions_dir / f"{now:%Y-%m-%d}.jsonl"
        entries = [
            {
                "decision_id": d["decision_id"],
                "customer_id": d["customer_id"],
                "decided_at": decided_at,
                "campaign": campaign,
                "send": d["send"],
                "send_at": logged_times.get(str(d["send_at"])) if d["send_at"] else None,
                "explore": d["explore"],
                "propensity": d["propensity"],
                "offer_ids": ranked,
                "exposed_offer_ids": shown,
                "holdout": d["holdout"],
                "model_versions": versions,
            }
            for d, ranked, shown in zip(decisions, batch.ranked_offers, batch.shown_offers, strict=True)
        ]
        lines = json_lines(entries, "decision_id")
        with self._log_lock:
            try:
                handle = path.open("ab")
            except FileNotFoundError:  # the first decision of this home, or its log folder was removed
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = path.open("ab")
            with handle:
                handle.write(lines)

    # --- render and explain ----------------------------------------------------------------------
    def render(self, request: RenderRequest) -> RenderResponse:
        template = check_template(request.template)
        recipient = request.recipient or Recipient(customer_id=request.customer_id)
        if recipient.customer_id != request.customer_id:
            recipient = recipient.model_copy(update={"customer_id": request.customer_id})
        decision = self.decide(DecideRequest(recipients=[recipient], campaign=request.campaign)).decisions[0]
        if not decision.send:
            return RenderResponse(
                customer_id=request.customer_id,
                template=template,
                send=False,
                subject=None,
                html=None,
                text=None,
                modules=[],
                reasons=decision.reasons,
            )
        served = self._served([recipient])
        matrix, known = served.matrix, served.known
        offers = self._offer_facts(decision)
        facts = self._facts(
            0,
            recipient,
            matrix,
            decision.open_probability or 0.0,
            offers,
            request.campaign.kind,
            request.campaign.topic,
            not bool(known[0]),
            decision.history_emails,
        )
        choices = choose_modules(facts, template)
        url = request.unsubscribe_url or f"https://example.invalid/unsubscribe?customer={request.customer_id}"
        email = render_email(template, facts, choices, unsubscribe_url=url, offers_catalog=self._catalog())
        return RenderResponse(
            customer_id=request.customer_id,
            template=template,
            send=True,
            subject=email.subject,
            html=email.html,
            text=email.text,
            modules=[RenderedModule(name=m.name, reason=m.reason) for m in email.modules],
            reasons=decision.reasons,
        )

    def _offer_facts(self, decision: Decision) -> list[OfferFact]:
        catalog = self._catalog()
        return [
            OfferFact(
                **o.model_dump(),
                category=_optional_str(catalog.get(o.offer_id, {}).get("category")),
                discount_pct=_optional_float(catalog.get(o.offer_id, {}).get("discount_pct")),
            )
            for o in decision.offers
        ]

    def _catalog(self) -> dict[str, dict[str, object]]:
        if self.offers is None:
            return {}
        catalog = {}
        for row in self.offers.to_dict("records"):
            catalog[str(row["offer_id"])] = {
                k: (None if pd.isna(v) else v) for k, v in row.items() if not isinstance(v, list)
            }
        return catalog

    def explain(self, request: ExplainRequest) -> ExplainResponse:
        from sendwise.explain import explain_rows  # SHAP takes seconds to import: only when asked to explain

        recipient = Recipient(customer_id=request.customer_id)
        served = self._served([recipient])
        matrix = served.matrix
        name = request.model
        model = self.models.get(name)
        if model is None:
            raise LookupError(f"no champion for {name} yet: run `sendwise pipeline --data DIR`")
        start = request_start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        if name == "next_best_offer":
            chosen, _ = self._offer_scores(served, start, None)
            if chosen is None:
                raise LookupError("no eligible offers to explain")
            count = len(chosen.ids)
            design = offer_design(matrix, np.zeros(count, dtype=np.int64), chosen.matrix, np.arange(count))
        else:
            curve = self._curves(matrix, request_start, 24, request.campaign.kind, request.campaign.topic)[0]
            best = request_start + timedelta(hours=int(np.argmax(curve)))
            design = open_design(
                matrix,
                np.zeros(1, dtype=np.int64),
                pd.Series([pd.Timestamp(best)]),
                np.array([request.campaign.kind]),
                np.array([request.campaign.topic], dtype=object),
            )
        design = design[feature_names(model.booster)]
        prediction = predict(model.booster, design)
        row = int(np.argmax(prediction))
        base, drivers = explain_rows(model.booster, design.iloc[[row]], top=request.top)
        return ExplainResponse(
            customer_id=request.customer_id,
            model=name,
            model_version=model.version,
            prediction=float(prediction[row]),
            base_value=base,
            drivers=[Driver(**d) for d in drivers[0]],
        )
