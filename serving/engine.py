"""The decision logic behind the HTTP API: a short chain over the modules that each own one part.

`Engine` holds what is loaded once (the champions, the Feast store, the offers, the send history) and answers
each request with plain functions of it, so everything the service does can be tested without starting it.
A decide reads the batch's online features (`serving.online`), scores every hour of the window
(`serving.curves`) and the eligible offers (`serving.offers`), applies the sender's rules (`serving.constraints`,
`serving.assign`), writes the decisions and their reasons (`serving.decisions`, `serving.reasons`) and logs
them (`serving.decision_log`). An explanation takes a served prediction apart (`serving.explanations`).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import redis
from feast import FeatureStore
from tqdm import tqdm

from features.offer_values import TABLE as OFFER_VALUES_TABLE
from features.offer_values import OfferValues
from features.store import open_store
from features.transform import CustomerMatrix
from sendwise.champions import MODEL_NAMES, LoadedModel
from sendwise.explain import sigmoid
from sendwise.raw import load_table, table_path
from sendwise.settings import Settings
from serving import reasons
from serving.assign import in_holdout, plan_hours
from serving.brand import Brand, brand_for, load_brand
from serving.constraints import allowed_hours, blocked_recipients, repeated_offers
from serving.curves import FALLBACK_OPEN_PROBABILITY, OpenCurves, predict_on_one_thread, use_compiled_trees
from serving.decision_log import DecisionLog, LoggedDecision
from serving.decisions import Batch, LoggedRender, Population, decision_rows
from serving.errors import NoChampion, NothingToExplain, UnknownCustomer, UnknownDecision, UnknownOffer
from serving.events import receive_events
from serving.explanations import decision_drivers, explain_offer, explain_opens
from serving.forget import forget_customers
from serving.history import History, SendHistory
from serving.history_store import SharedHistory
from serving.links import Tracking, email_headers, filled
from serving.modules import ModuleFacts, as_logged, choose_modules
from serving.offers import OfferCatalog, OfferSet, eligible_offers, read_offer_features
from serving.online import BatchFeatures, OnlineFeatures, OnlineState, RhythmPriors
from serving.realtime import RealtimeFeatures
from serving.redis_features import RedisFeatures
from serving.render import Personal, check_layout, render_email
from serving.schemas import (
    Campaign,
    Constraints,
    DecideRequest,
    DecideResponse,
    Driver,
    EventsRequest,
    EventsResponse,
    ExplainRequest,
    ExplainResponse,
    ForgetRequest,
    ForgetResponse,
    Recipient,
    RenderedModule,
    RenderRequest,
    RenderResponse,
    next_whole_hour,
)
from serving.snapshot import release_memory, use_system_allocator

logger = logging.getLogger(__name__)

SAMPLE_FOR_POPULATION = 400
POPULATIONS_KEPT = 48
"""Populations kept, by the hour they were measured from: every hour of two days of windows."""
KEEP_CHUNK = 20_000
"""Customers read, scored and written at a time by `Engine.keep_offer_scores`."""
DECIDE_PART = 1_000
"""A decide's answer is made, logged and encoded this many recipients at a time: made whole, a 10,000-recipient
answer's plain objects (about 70 MB, beside its 26 MB of JSON) were the most a replica's worker held."""


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


class Tally:
    """A count that threads add to (the decisions answered degraded, for `/metrics`)."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


def _listed(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def customer_attributes(matrix: CustomerMatrix, row: int) -> dict[str, object]:
    """A row's `attr_*` values that are there (what a subject may name), as plain Python values."""
    found: dict[str, object] = {}
    for name, column in matrix.attributes.items():
        value = column[row]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        found[name] = value.item() if isinstance(value, np.generic) else value
    return found


def _champions_in_process(settings: Settings) -> dict[str, LoadedModel]:
    from sendwise.registry import load_champions  # MLflow: imported where it is used

    return load_champions(settings)


class Engine:
    """Champions and features, loaded once; decisions, renders and explanations per request."""

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore | None,
        models: dict[str, LoadedModel],
        offers: pd.DataFrame | None,
        offer_features: pd.DataFrame | None,
        history: History | None = None,
        rhythm_priors: pd.DataFrame | None = None,
        offer_values: OfferValues | None = None,
        log_decisions: bool = True,
    ) -> None:
        self.settings = settings
        self.log_decisions = log_decisions
        """Whether decisions are written to the home's decision log (off for evaluations: what they decide was
        never sent, and a frequency cap would count it)."""
        self.store = store
        self.models = models
        self.brand: Brand | None = load_brand(settings.brand_file) if settings.brand_file else None
        priors = RhythmPriors(rhythm_priors)
        self.catalog = OfferCatalog(offers, offer_features, offer_values, models, priors)
        self.curves = OpenCurves(models)
        self.shared: SharedHistory | None
        """Past decisions in the Redis replicas share (`SENDWISE_ONLINE_STORE=redis`), else None."""
        self.history: History
        self.log: DecisionLog
        self._use_past_decisions(settings, history)
        self._rng = np.random.default_rng()
        self._rng_lock = threading.Lock()
        self.population = Population(FALLBACK_OPEN_PROBABILITY, 1.0)
        """The population for the hour the engine loaded (or Redis answered) in: what a decide falls back on
        while the features cannot be read (`population_at`)."""
        self._populations: OrderedDict[datetime, Population] = OrderedDict()
        self._population_lock = threading.Lock()
        self.degraded_decisions = Tally()
        self.online: OnlineFeatures | RedisFeatures
        if store is not None and settings.online_store == "redis":  # each batch reads Redis: no snapshot
            self.online = RedisFeatures(settings, store, priors)
        else:
            self.online = OnlineFeatures(settings, store, priors, self.catalog.score_snapshot)
        self.online.blank = OnlineState.empty(models)
        self.realtime = RealtimeFeatures(store, self.shared.client if self.shared is not None else None)
        if isinstance(self.online, OnlineFeatures):  # Redis reads the email state with each batch's features
            self.online.read_email_state = self.realtime.email_state
        self._unread_at_start = False
        """Redis could not be read at start: the offers' features and the population are read with the first
        batch it answers (`_read_what_start_could_not`)."""
        self._start_lock = threading.Lock()
        self.population = self.population_at(datetime.now(UTC))

    def _use_past_decisions(self, settings: Settings, history: History | None) -> None:
        """Where this engine counts and logs past decisions: with Redis, the shared history and a log part of
        this process's own (no index: render by id reads Redis); else `history` (or none) and the home's log."""
        if settings.online_store == "redis":
            self.shared = SharedHistory(settings)
            self.history = history or self.shared
            self.log = DecisionLog(settings.decision_log_max_bytes, per_process=True, indexed=False)
        else:
            self.shared = None
            self.history = history or SendHistory.empty(settings.decisions_dir)
            self.log = DecisionLog(settings.decision_log_max_bytes)

    def on_home(self, settings: Settings) -> Engine:
        """This engine's models, features and offers deciding into the home and past decisions of `settings`
        (a replica of the same champions: what tests of several replicas on one Redis start)."""
        twin = copy.copy(self)
        twin.settings = settings
        twin.degraded_decisions = Tally()
        twin._use_past_decisions(settings, None if settings.online_store == "redis" else SendHistory.from_raw(settings))
        return twin

    @property
    def offers(self) -> pd.DataFrame | None:
        """The offers table of the raw store (None where the home has none)."""
        return self.catalog.offers

    @property
    def offer_features(self) -> pd.DataFrame | None:
        """The offers' features as Feast's online store has them (None without a store)."""
        return self.catalog.offer_features

    @property
    def refresh_in_background(self) -> bool:
        """Whether changed feature tables are read in a thread of their own (`OnlineFeatures`)."""
        return self.online.refresh_in_background

    @refresh_in_background.setter
    def refresh_in_background(self, value: bool) -> None:
        self.online.refresh_in_background = value

    def wait_for_refresh(self, timeout: float | None = None) -> None:
        """Until a background read of the online features (if one runs) is done: for tests and tools."""
        self.online.wait_for_refresh(timeout)

    def after_fork(self) -> None:
        """In a process forked from the one that loaded this engine (the bulk path's workers): a random stream
        of its own, else every worker draws the same explorations; and predictions on one thread."""
        with self._rng_lock:
            self._rng = np.random.default_rng()
        predict_on_one_thread()

    def reseed(self, seed: int | None) -> None:
        """Exploration drawn from `seed` from now on (None: fresh entropy): for simulations that must repeat."""
        with self._rng_lock:
            self._rng = np.random.default_rng(seed)

    # --- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        settings: Settings,
        log_decisions: bool = True,
        champions: Callable[[], dict[str, LoadedModel]] | None = None,
    ) -> Engine:
        """The champions from MLflow, the Feast store, the offers and the send history of the home. Without
        `log_decisions` nothing is written to the home's decision log (its index included). `champions` gives
        the models where MLflow is not to be imported here (the service: `sendwise.champions`); it is called
        once the rest is loaded. Without it they are loaded in this process."""
        use_system_allocator()  # what loading frees goes back to the system by `release_memory` below
        store = open_store(settings, online_only=True) if (settings.feast_dir / "registry.db").exists() else None
        offers = load_table(settings, "offers")
        unread = None
        try:
            offer_features = read_offer_features(store, offers)
        except (redis.RedisError, OSError) as error:
            if settings.online_store != "redis":
                raise
            offer_features, unread = None, error  # a replica starts while Redis is down, degraded
        priors_path = settings.feature_tables_dir / "rhythm_priors.parquet"
        priors = pd.read_parquet(priors_path) if priors_path.exists() else None
        values = OfferValues.read(settings.feature_tables_dir / f"{OFFER_VALUES_TABLE}.parquet")
        use_compiled_trees(settings.uses_compiled_trees)
        history = None if settings.online_store == "redis" else SendHistory.from_raw(settings)
        models = champions() if champions is not None else _champions_in_process(settings)
        engine = cls(settings, store, models, offers, offer_features, history, priors, values, log_decisions)
        if unread is not None and isinstance(engine.online, RedisFeatures):
            logger.error("the offers' features cannot be read from Redis (%s): they are read when it answers", unread)
            engine.online.failed(unread)
            engine._unread_at_start = True
        if log_decisions:  # a torn last line left by a process killed mid-write is cut off before anything else
            engine.log.recover(settings.decisions_dir)
            engine.log.forget_before(settings.decisions_dir, datetime.now(UTC) - timedelta(days=settings.render_days))
        # What was just loaded (models, Feast, MLflow, the snapshot) lives as long as the process: keep it out
        # of the cycle collector's full passes, which otherwise walk all of it whenever a batch's answer, or a
        # bulk file's recipients, allocate enough to trigger one.
        gc.collect()
        gc.freeze()
        release_memory()  # the transients of loading (tables read, the curves' grid, LightGBM's dumps)
        return engine

    def with_champions(self, models: dict[str, LoadedModel]) -> Engine:
        """This engine serving `models`: a new engine sharing the store, offers, send history, decision log and
        online snapshot (its offers scored again when the offer champion changed), whole before anyone uses it,
        so that the service swaps it in with one assignment and every request is decided by one set of models."""
        twin = copy.copy(self)
        twin.models = models
        priors = self.catalog.priors
        twin.catalog = OfferCatalog(self.offers, self.offer_features, self.catalog.offer_values, models, priors)
        twin.curves = OpenCurves(models)
        same_offer_model = models.get("next_best_offer") is self.models.get("next_best_offer")
        twin.online = self.online.rescored(twin.catalog.score_snapshot, offers_changed=not same_offer_model)
        twin.online.blank = OnlineState.empty(models)
        twin._populations, twin._population_lock = OrderedDict(), threading.Lock()  # measured by its own models
        twin.population = twin.population_at(datetime.now(UTC))
        return twin

    def model_versions(self) -> dict[str, str | None]:
        return {name: (self.models[name].version if name in self.models else None) for name in MODEL_NAMES}

    def status(self) -> dict[str, object]:
        found = list(self.online.degraded_reasons)
        if self.shared is not None:
            found.extend(self.shared.degraded_reasons)
        found.extend(
            reasons.no_champion(name, self.catalog.offer_values) for name in MODEL_NAMES if name not in self.models
        )
        if self.store is None:
            found.append(reasons.NO_FEATURE_STORE)
        if self._unread_at_start and isinstance(self.online, RedisFeatures):
            found.append(reasons.offers_unread(self.online.where))
        return {
            "status": "degraded" if found else "ok",
            "reasons": found,
            "models": self.model_versions(),
            "degraded_decisions": self.degraded_decisions.value,
        }

    def population_at(self, start: datetime) -> Population:
        """The population for the day from `start`'s hour: measured the first time a decide asks for that hour
        (a sample's features, curves and offers: tens of milliseconds) and kept for the last `POPULATIONS_KEPT`
        hours, so that a campaign for next week compares with next week's hours and eligible offers rather than
        today's. Where the features cannot be read (or there are none), `population`."""
        if self.store is None or self.online.degraded_reasons:  # no features, or not readable now
            return self.population
        hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        with self._population_lock:
            found = self._populations.get(hour)
            if found is not None:
                self._populations.move_to_end(hour)
                return found
            measured = self._measure_population(hour)
            if self.online.degraded_reasons:  # the features failed while it was measured: not kept
                return self.population
            self._populations[hour] = measured
            if len(self._populations) > POPULATIONS_KEPT:
                self._populations.popitem(last=False)
            return measured

    def _measure_population(self, at: datetime | None = None) -> Population:
        """Mean best-hour open probability and the median best offer value of a sample of known customers, for
        the day from `at` (a whole hour; default: the hour now)."""
        path = table_path(self.settings, "customers")
        if not path.exists() or "open_propensity" not in self.models:
            return Population(FALLBACK_OPEN_PROBABILITY, 1.0)
        # The ids alone, as Arrow strings (as Python strings they cost a process tens of MB more at its peak), and
        # the sample pandas' `Series.sample(n, random_state=seed)` draws, taken from them.
        ids = pq.read_table(path, columns=["customer_id"], use_threads=False).column(0)
        if not len(ids):
            return Population(FALLBACK_OPEN_PROBABILITY, 1.0)
        drawn = np.random.RandomState(self.settings.seed).choice(
            len(ids), size=min(SAMPLE_FOR_POPULATION, len(ids)), replace=False
        )
        sample = ids.take(pa.array(drawn)).to_pylist()
        del ids
        features = self.online.for_recipients([Recipient(customer_id=c) for c in sample])
        start = at or datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        curves = self.curves.curves(features.matrix, start, 24, "promotional", None)
        _, probability = self.catalog.conversion(features, start, None)
        threshold = 1.0
        if probability.size:
            margins = eligible_offers(self.catalog.offers, start, None)["margin"].fillna(1.0).to_numpy()
            threshold = float(np.median((probability * margins[None, :]).max(axis=1)))
        return Population(float(curves.max(axis=1).mean()), threshold)

    def keep_offer_scores(self, customer_ids: Sequence[str], at: datetime | None = None, progress: bool = False) -> int:
        """With Redis: score the customers' offers for decisions at `at` (default: the next whole hour) and keep
        them in Redis beside their features (`serving.offer_scores`) where they are not kept already, so that
        batches look them up; customers written (0 without Redis or an offer champion). What the pipeline runs
        after materializing into Redis; a batch writes back the scores it had to compute."""
        at = at or next_whole_hour()
        if not isinstance(self.online, RedisFeatures) or self.catalog.model is None:
            return 0
        written = 0
        bar = tqdm(total=len(customer_ids), desc="offer scores into Redis", unit="customer", disable=not progress)
        with bar:
            for first in range(0, len(customer_ids), KEEP_CHUNK):
                part = customer_ids[first : first + KEEP_CHUNK]
                with collector_paused():
                    features = self.online.for_recipients([Recipient(customer_id=c) for c in part])
                    if features.degraded:
                        raise RuntimeError(
                            f"offer scores cannot be kept: the Redis online store at {self.online.where} cannot be read"
                        )
                    written += self.catalog.keep_scores(features, at)
                bar.update(len(part))
        return written

    # --- erasure ---------------------------------------------------------------------------------
    def forget(self, request: ForgetRequest) -> ForgetResponse:
        """Erase the customers from the home (`serving.forget`, Redis's keys of them included), then drop what
        this engine holds of them: the snapshot is read again from the rewritten feature tables and the send
        history (without Redis) from the raw store and the rewritten log. Until it is, decisions go on from the
        old snapshot (the lock keeps reads whole)."""
        report = forget_customers(self.settings, request.customer_ids, self.log)
        if self.shared is None:  # Redis's history lost the customers' keys with the erasure
            self.history = SendHistory.from_raw(self.settings)
        if self.store is not None:
            self.online.refresh()
        return ForgetResponse.model_validate(report.as_dict())

    # --- events ----------------------------------------------------------------------------------
    def events(self, request: EventsRequest) -> EventsResponse:
        """Append a batch of contract rows durably, then push their latest values to the online store
        (`serving.events`); `EventsError` names the bad rows of a batch that was not appended."""
        return receive_events(self.settings, request, self.realtime.push if self.store is not None else None)

    # --- decisions -------------------------------------------------------------------------------
    def decide(self, request: DecideRequest) -> DecideResponse:
        """The answer of `/v1/decide` as a model (the service sends `decide_payload` encoded as it is)."""
        return DecideResponse.model_validate(self.decide_payload(request))

    def decide_json(self, request: DecideRequest) -> bytes:
        """The answer of `/v1/decide`, encoded, in one piece (`decide_chunks` joined)."""
        return b"".join(self.decide_chunks(request))

    def decide_chunks(self, request: DecideRequest) -> list[bytes | memoryview]:
        """The answer of `/v1/decide`, encoded in pieces that make it when sent one after the other: what the
        service sends. Made `DECIDE_PART` recipients at a time: each part's decisions are logged and encoded,
        then dropped, so a big batch never holds all its answer's objects at once; the encoded parts are not
        joined either (that would hold the answer twice: 27 MB more for 10,000 recipients), but framed by
        the answer's other fields (in `DecideResponse`'s order) and commas. All of it is made before the
        first piece is sent, so a failure is still answered as an error of its own."""
        with collector_paused():  # until the answer is bytes: its objects are gone before a collection runs
            batch, parts = self._decided(request, self._family(request))
            encoded = [orjson.dumps(decisions) for decisions in parts]
            head = orjson.dumps(self._answer_head(batch, len(request.recipients)))
            del batch  # its arrays go before the memory is released
            chunks: list[bytes | memoryview] = [memoryview(head)[:-1], b',"decisions":[']  # the head without its }
            inner = [memoryview(p)[1:-1] for p in encoded if len(p) > 2]  # without brackets ("[]": nobody)
            for k, part_json in enumerate(inner):
                chunks += [b",", part_json] if k else [part_json]
            chunks.append(b"]}")
        if len(request.recipients) > DECIDE_PART:
            del encoded, inner
            release_memory()  # what the batch freed goes back to the system: about 60 MB of 10,000, in 5-10 ms
        return chunks

    def decide_payload(self, request: DecideRequest) -> dict[str, object]:
        """One decision per recipient, in request order, as plain data in the shape of `DecideResponse`."""
        with collector_paused():
            batch, parts = self._decided(request, self._family(request))
            decisions = [decision for part in parts for decision in part]
            return {**self._answer_head(batch, len(decisions)), "decisions": decisions}

    @staticmethod
    def _family(request: DecideRequest) -> str:
        """Which modules a decide's emails get."""
        return "newsletter" if request.campaign.kind == "newsletter" else "promotional"

    def _explain(self, batch: Batch, decisions: list[dict[str, object]], part: slice) -> None:
        """The drivers of each sent decision of `part` of the batch, added to its decision."""
        model, hours, first = self.curves.model, batch.plan.hours[part], part.start or 0
        decision_drivers(model, batch.features.matrix, decisions, batch.start, hours, batch.kind, batch.topic, first)

    def _answer_head(self, batch: Batch, decided: int) -> dict[str, object]:
        """An answer's fields but its decisions: the models, and whether the batch's `decided` decisions were
        made on everything they need (its features, and past decisions while it was decided and logged)."""
        found = (list(self.online.degraded_reasons) or [reasons.NO_FEATURE_STORE]) if batch.features.degraded else []
        if self.shared is not None:
            found += self.shared.degraded_reasons
        if found:
            self.degraded_decisions.add(decided)
        return {"model_versions": self.model_versions(), "status": "degraded" if found else "ok", "reasons": found}

    def _decided(self, request: DecideRequest, family: str) -> tuple[Batch, Iterator[list[dict[str, object]]]]:
        """The batch, computed whole, and its decisions `DECIDE_PART` rows at a time (`_parts`): `family` says
        which modules the emails get."""
        batch = self._batch(request)
        batch.template = family
        return batch, self._parts(batch, request)

    def _parts(self, batch: Batch, request: DecideRequest) -> Iterator[list[dict[str, object]]]:
        """The batch's decisions a part at a time, each logged (where the engine logs) and then explained (where
        the request asks) before it is yielded. The batch's `ranked_offers`, `shown_offers` and `render_facts`
        are the yielded part's."""
        notes = self._notes(batch)
        population = self.population_at(batch.start)
        n = len(request.recipients)
        # one recording for the whole batch: Redis records a part while the next one is made (`recording`)
        recording = self.shared.recording() if self.shared is not None and self.log_decisions else None
        with recording or contextlib.nullcontext() as sink:
            for lo in range(0, max(n, 1), DECIDE_PART):
                part = slice(lo, min(lo + DECIDE_PART, n))
                batch.ranked_offers.clear()
                batch.shown_offers.clear()
                batch.render_facts.clear()
                decisions = decision_rows(batch, request.recipients, notes, population, part)
                if self.log_decisions:
                    self.log.append(
                        self.settings.decisions_dir,
                        decisions,
                        batch.ranked_offers,
                        batch.shown_offers,
                        request.campaign.model_dump(),
                        self.model_versions(),
                        dict(batch.window_times),
                        batch.render_facts,
                        batch.logged_hours(part),
                        sink=sink,
                    )
                if request.explain:
                    self._explain(batch, decisions, part)
                yield decisions

    def _batch(self, request: DecideRequest) -> Batch:
        """Everything a decide computes for the whole batch at once: features, curves, offers, rules, hours."""
        start, hours = request.resolved_window_start(), request.window_hours
        kind, topic = request.campaign.kind, request.campaign.topic
        constraints = request.constraints or Constraints()
        explore_share = self.settings.explore_share if request.explore_share is None else request.explore_share
        features = self.online.for_recipients(request.recipients)
        if self._unread_at_start and not features.degraded:
            self._read_what_start_could_not()
        self._stop_where_pushed(features, [r.customer_id for r in request.recipients])
        self._read_latest(features, [r.customer_id for r in request.recipients])
        chosen, conversion = self.catalog.conversion(features, start, request.offer_ids)
        offers = chosen.offers if chosen is not None else pd.DataFrame()
        margins = chosen.margins if chosen is not None else np.zeros(0)
        kinds = chosen.kinds if chosen is not None else np.zeros(0, dtype=object)
        ids = [r.customer_id for r in request.recipients]
        zones = features.matrix.timezone.tolist()
        curves, ranked = self.curves.ranked(features.matrix, start, hours, kind, topic)
        holdout = in_holdout(ids, self.settings.holdout_share, self.settings.holdout_salt)
        blocked = blocked_recipients(
            features, ids, start, kind, constraints, holdout, self.settings.holdout_share, self.history
        )
        allowed = allowed_hours(blocked, start, hours, zones, constraints.quiet_hours)
        sendable = np.array([b is None for b in blocked], dtype=bool)
        explore, draws = self._draws(len(ids), explore_share)
        plan = plan_hours(ranked, allowed, sendable, explore, draws, explore_share, constraints.max_share_per_hour)
        return Batch(
            start=start,
            kind=kind,
            topic=topic,
            k_offers=request.k_offers,
            explore_share=explore_share,
            features=features,
            curves=curves,
            ranked=ranked,
            explore=explore & sendable & (plan.hours >= 0),
            plan=plan,
            blocked=blocked,
            holdout=holdout,
            constraints=constraints,
            zones=zones,
            offers=offers,
            offer_summaries=chosen.summaries if chosen is not None else [],
            conversion=conversion,
            value=conversion * margins[None, :],
            control=np.flatnonzero(kinds == "control") if self.catalog.values_known() else np.zeros(0, dtype=np.int64),
            excluded=repeated_offers(ids, offers, start, constraints.no_repeat_offer_days, sendable, self.history),
            logged_values=self.catalog.model is None,
        )

    def _read_what_start_could_not(self) -> None:
        """Once Redis answers a replica that started without it: the offers' features (until then no offer is
        ranked) and the population's open probability and offer value (until then measured on no features)."""
        with self._start_lock:
            if not self._unread_at_start:
                return
            try:
                offer_features = read_offer_features(self.store, self.offers)
            except (redis.RedisError, OSError) as error:
                if isinstance(self.online, RedisFeatures):
                    self.online.failed(error)
                return
            catalog = self.catalog
            self.catalog = OfferCatalog(self.offers, offer_features, catalog.offer_values, self.models, catalog.priors)
            with self._population_lock:
                self._populations.clear()  # any kept were measured without the offers' features
            self.population = self.population_at(datetime.now(UTC))
            self._unread_at_start = False
            logger.warning("the offers' features were read from Redis: offers are ranked again")

    def _draws(self, n: int, explore_share: float) -> tuple[np.ndarray, np.ndarray]:
        """(who explores, a uniform draw per recipient that picks their exploration hour)."""
        with self._rng_lock:
            explore = self._rng.random(n) < explore_share
            hour_draws = self._rng.random(n)
        return explore, hour_draws

    def _notes(self, batch: Batch) -> list[str]:
        """The reasons every sent decision of the batch gives: models missing, and how its offers were ranked."""
        notes = []
        if "open_propensity" not in self.models and "send_time" not in self.models:
            notes.append(reasons.NO_OPEN_MODEL)
        if batch.k_offers <= 0:
            return notes
        if batch.offers.empty:
            notes.append(reasons.NO_OFFER_ELIGIBLE if self.catalog.has_offers else reasons.NO_OFFERS_IN_DATA)
        elif self.catalog.model is None:
            notes.extend(reasons.without_offer_model(self.catalog.offer_values, batch.offers["offer_id"].tolist()))
        return notes

    # --- render and explain ----------------------------------------------------------------------
    def render(self, request: RenderRequest) -> RenderResponse:
        """A logged decision's email (`decision_id`), or a new decision's for one recipient, decided and logged
        once: nothing is decided or logged twice for one email."""
        templates_dir = self.settings.templates_dir
        if request.template is not None:
            check_layout(request.template, templates_dir)
        if request.decision_id is not None:
            return self._render_logged(self._logged(request.decision_id), request.template)
        campaign = request.campaign or Campaign()
        brand_for(self.brand, campaign.kind, self.settings.brand_file)  # before deciding: a refusal logs nothing
        recipient = (request.recipient or Recipient(customer_id=str(request.customer_id))).model_copy(
            update={"customer_id": request.customer_id}
        )
        family = "newsletter" if request.template == "newsletter" or campaign.kind == "newsletter" else "promotional"
        batch, parts = self._decided(DecideRequest(recipients=[recipient], campaign=campaign), family)
        ((decision,),) = parts  # one recipient: one part
        entry = {
            **decision,
            "campaign": campaign.model_dump(),
            "send_at": dict(batch.window_times).get(str(decision["send_at"])) if decision["send_at"] else None,
            "offer_ids": batch.ranked_offers[0],
            "render": batch.render_facts[0],
        }
        return self._render_logged(LoggedDecision(entry, datetime.now(UTC)), request.template)

    def _logged(self, decision_id: str) -> LoggedDecision:
        """The logged decision with this id that may still be rendered, or a 404 that says why not."""
        if self.shared is not None:
            logged = self.shared.find(decision_id)
        else:
            logged = self.log.find(self.settings.decisions_dir, decision_id)
        if logged is None:
            raise UnknownDecision(decision_id)
        oldest = datetime.now(UTC) - timedelta(days=self.settings.render_days)
        if logged.decided_at < oldest:
            raise UnknownDecision(decision_id, logged.decided_at, self.settings.render_days)
        return logged

    def _stop_where_pushed(self, features: BatchFeatures, ids: list[str]) -> None:
        """No longer eligible where an unsubscribe, complaint or hard bounce was pushed since the features were
        materialized (read with the features on Redis, from Feast's online store otherwise)."""
        stopped = features.stopped
        if stopped is None:
            stopped = self.realtime.stopped(ids)
        features.eligible = features.eligible & ~stopped

    def _read_latest(self, features: BatchFeatures, ids: list[str]) -> None:
        """The customers' latest activity as model inputs, pushed events included (read with the features on
        Redis, from Feast's online store otherwise)."""
        if not features.latest_read:
            features.set_latest(self.realtime.latest(ids))

    def _render_logged(self, logged: LoggedDecision, template: str | None) -> RenderResponse:
        entry = logged.entry
        campaign = Campaign.model_validate(entry.get("campaign") or {})
        customer_id, decision_id = str(entry["customer_id"]), str(entry["decision_id"])
        logged_facts = entry.get("render")
        send_at = datetime.fromisoformat(str(entry["send_at"])) if entry.get("send_at") else None
        logged_template = logged_facts.get("template") if isinstance(logged_facts, dict) else None
        template = template or str(
            logged_template or ("newsletter" if campaign.kind == "newsletter" else "promotional")
        )
        refused = RenderResponse(customer_id=customer_id, decision_id=decision_id, template=template, send=False)
        given = entry.get("reasons")  # a decision not to send, or one made for this render; the log's sends have none
        decided_for = [str(r) for r in given] if isinstance(given, list) else []
        if not entry.get("send"):
            return refused.model_copy(update={"reasons": [reasons.decided_not_to_send(decision_id), *decided_for]})
        if not isinstance(logged_facts, dict):
            raise UnknownDecision(decision_id, logged_without_facts=True)
        facts = LoggedRender.model_validate(logged_facts)
        brand = brand_for(self.brand, campaign.kind, self.settings.brand_file)
        features = self.online.for_recipients([Recipient(customer_id=customer_id)])
        self._stop_where_pushed(features, [customer_id])  # an unsubscribe since the decision stops its email
        no_consent = not bool(features.consent[0])
        if no_consent or not features.eligible[0]:
            why = reasons.NO_CONSENT if no_consent else reasons.NOT_ELIGIBLE
            return refused.model_copy(update={"reasons": [reasons.changed_since_decision(decision_id), why]})
        module_facts = ModuleFacts(
            customer_id=customer_id,
            campaign_kind=campaign.kind,
            campaign_topic=campaign.topic,
            open_probability=facts.open_probability,
            population_open_probability=facts.population_open_probability,
            offers=self.catalog.facts_for_modules(facts.offers([str(o) for o in _listed(entry.get("offer_ids"))])),
            high_value_threshold=facts.high_value_threshold,
            category_affinity=facts.category_views,
            interests=facts.interests,
            cold_start=facts.cold_start,
            history_emails=facts.history_emails,
        )
        choices = as_logged(choose_modules(module_facts, facts.template), facts.modules)
        unsubscribe = (
            filled(brand.unsubscribe_url, customer_id, decision_id, campaign.campaign_id)
            if brand.unsubscribe_url
            else None
        )
        tracking = Tracking(
            decision_id, brand.utm.source, brand.utm.medium, campaign.campaign_id or campaign.topic or campaign.kind
        )
        if features.known[0]:
            attributes = customer_attributes(features.matrix, 0)
        else:
            attributes = dict(facts.recipient.attributes) if facts.recipient else {}
        email = render_email(
            template,
            module_facts,
            choices,
            brand=brand,
            tracking=tracking,
            unsubscribe_url=unsubscribe,
            offers_catalog=self.catalog.rows_by_id(),
            personal=Personal(campaign.subject, campaign.preheader, attributes),
            templates_dir=self.settings.templates_dir,
        )
        return RenderResponse(
            customer_id=customer_id,
            decision_id=decision_id,
            template=template,
            send=True,
            send_at=send_at,
            subject=email.subject,
            preheader=email.preheader,
            html=email.html,
            text=email.text,
            headers=email_headers(brand, decision_id, unsubscribe, campaign.kind, customer_id, campaign.campaign_id),
            modules=[RenderedModule(name=m.name, reason=m.reason) for m in email.modules],
            reasons=[reasons.rendered_decision(decision_id, logged.decided_at), *decided_for],
            warnings=email.warnings,
        )

    def explain(self, request: ExplainRequest) -> ExplainResponse:
        """The top drivers of one known customer's prediction by one champion, in plain words: the open
        probability at `send_at` (by default the best hour of the next 24), or an offer's conversion probability."""
        name = request.model
        model = self.models.get(name)
        if model is None:
            raise NoChampion(name)
        features = self.online.for_recipients([Recipient(customer_id=request.customer_id)])
        if not features.known[0]:
            raise UnknownCustomer(request.customer_id)
        self._read_latest(features, [request.customer_id])
        matrix = features.matrix
        send_at: datetime | None = None
        offer_id: str | None = None
        if name == "next_best_offer":
            offer_id = str(request.offer_id)
            at = request.send_at or next_whole_hour()
            offers, column = self._explained_offer(offer_id, at)
            explanation = explain_offer(model, matrix, 0, offers.matrix, column, request.top, at)
        else:
            kind, topic = request.campaign.kind, request.campaign.topic
            send_at = request.send_at or self._best_hour(matrix, kind, topic)
            (explanation,) = explain_opens(
                model, matrix, np.zeros(1, dtype=np.int64), [send_at], kind, topic, request.top
            )
        return ExplainResponse(
            customer_id=request.customer_id,
            model=name,
            model_version=model.version,
            send_at=send_at,
            offer_id=offer_id,
            prediction=explanation.probability,
            base_value=explanation.base_value,
            base_probability=sigmoid(explanation.base_value),
            drivers=[Driver(**d) for d in explanation.drivers],
            others_shap_value=explanation.others,
        )

    def _best_hour(self, matrix: CustomerMatrix, kind: str, topic: str | None) -> datetime:
        """The hour /v1/decide would choose for the first row of `matrix` in the 24 from the next whole hour."""
        start = next_whole_hour()
        ranked = self.curves.ranked(matrix, start, 24, kind, topic)[1][0]
        return start + timedelta(hours=int(np.argmax(ranked)))

    def _explained_offer(self, offer_id: str, at: datetime) -> tuple[OfferSet, int]:
        """The offers eligible at `at` and the column of `offer_id` among them, or a 404 that says why not."""
        catalog = self.catalog.offers
        if catalog is None or offer_id not in self.catalog.rows_by_id():
            raise UnknownOffer(offer_id)
        if self.catalog.offer_features is None:
            raise NothingToExplain("the offers have no features in the online store: run `sendwise pipeline`")
        eligible = self.catalog.eligible(at, None)
        if eligible is None or offer_id not in eligible.ids:
            raise UnknownOffer(
                offer_id, f"is not eligible at {at:%Y-%m-%dT%H:%M:%SZ} ({_why_not_eligible(catalog, offer_id, at)})"
            )
        return eligible, eligible.ids.index(offer_id)


def _why_not_eligible(offers: pd.DataFrame, offer_id: str, at: datetime) -> str:
    """Why `eligible_offers` leaves the offer out at `at`, in a few words."""
    row = offers[offers["offer_id"].astype(str) == offer_id].iloc[0]
    stamp = pd.Timestamp(at)
    inventory, starts, ends = row.get("inventory"), row.get("starts_at"), row.get("ends_at")
    if inventory is not None and not pd.isna(inventory) and inventory <= 0:
        return "out of stock"
    if starts is not None and not pd.isna(starts) and starts > stamp:
        return f"it starts at {pd.Timestamp(starts):%Y-%m-%dT%H:%M:%SZ}"
    if ends is not None and not pd.isna(ends) and ends <= stamp:
        return f"it ended at {pd.Timestamp(ends):%Y-%m-%dT%H:%M:%SZ}"
    return "left out of the catalog's eligible offers"
