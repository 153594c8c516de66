"""Latest values in Feast's online store: pushed as events arrive, read at every decision.

The batch aggregates (engagement, profile) change when the pipeline or `sendwise materialize` runs; what a
customer did last and whether email to them has stopped change with every event. `features.latest` defines
both the way the batch build computes them; here a batch of events (`POST /v1/events`) updates the customers'
current rows, read from the online store, and pushes them through the Feast push sources, online only (the
raw store's append is the durable record, and the next feature build recomputes the batch tables from it).

A push reads the customers' current rows, combines them with the events and writes them back: two replicas
pushing for one customer at once would each write back what the other has not seen, and one event's change
would be lost. Every replica on one store takes one lock around it (`PushLock`): a file lock beside the SQLite
store (on the one machine that shares it), a Redis lock where the store is Redis.

At decide time the email state and the latest activity of the batch's customers are read from the online store
in one bulk read each, so that an unsubscribe, complaint or hard bounce pushed through any replica stops the next
decision on every replica, and a visit or a purchase moves its send time and its offers (they are model inputs):
with SQLite, `online_read` of the store's own provider (one query); with Redis, in the same pipelined
HMGET per customer that reads the batch's features (`serving.redis_features`), since Feast keeps every view of a
customer in one Redis hash and its own `online_read` parses each value into a proto, view by view.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis
from feast import FeatureStore, FeatureView
from feast.data_source import PushMode
from feast.errors import FeatureViewNotFoundException
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type

from features.latest import (
    ACTIVITY_COLUMNS,
    ACTIVITY_TABLE,
    ACTIVITY_TEXTS,
    ACTIVITY_TIMES,
    EMAIL_CONSENTS,
    EMAIL_FLAGS,
    EMAIL_STATE_TABLE,
    KEY,
    TIME,
    accumulate,
    activity_changes,
    consent_changes,
    current,
    email_state_changes,
    with_schema,
)
from sendwise.ingest.appended import CheckedEvents

logger = logging.getLogger(__name__)

ACTIVITY_VIEW = "latest_activity_fv"
EMAIL_STATE_VIEW = "email_state_fv"
RETRY_SECONDS = 60.0
PUSH_SOURCES = {ACTIVITY_VIEW: "latest_activity_push", EMAIL_STATE_VIEW: "email_state_push"}


Activity = tuple[float, float, str | None, str | None]
"""One customer's latest activity as a decision reads it: `ACTIVITY_TIMES` (NaN: never), then `ACTIVITY_TEXTS`."""
NO_ACTIVITY: Activity = (np.nan, np.nan, None, None)
CACHE_CUSTOMERS = 1_000_000
"""Customers whose values a process keeps between changes of the store; past it, it starts over."""


@dataclass(frozen=True)
class EmailState:
    """A batch's email state from the latest values: stops, and the consent pushed customers rows gave (per
    customer 1 given, 0 withdrawn, NaN where none was pushed: the batch features' consent holds)."""

    stopped: np.ndarray
    consent_email: np.ndarray
    consent_profiling: np.ndarray

    @classmethod
    def none(cls, n: int) -> EmailState:
        """Nothing pushed: no stop, no consent given or withdrawn."""
        return cls(np.zeros(n, dtype=bool), np.full(n, np.nan), np.full(n, np.nan))


def sqlite_path(store: FeatureStore | None) -> Path | None:
    """The SQLite file of the store's online store (None: no store, or not SQLite)."""
    if store is None or getattr(store.config.online_store, "type", None) != "sqlite":
        return None
    path = Path(store.config.online_store.path)
    return path if path.is_absolute() else Path(store.repo_path) / path


class UnchangedReads:
    """What was read from a SQLite online store since it last changed, so that deciding the same customers again
    reads nothing.

    SQLite's `PRAGMA data_version`, asked on a connection of this cache's own, changes whenever any other
    connection commits: a push through Feast in this process or in another replica, `sendwise materialize`.
    Every read first asks it (microseconds) and forgets everything when it moved; values read while a commit
    lands are forgotten at the next read. Without a SQLite file (Redis, no store) every read goes to the store.
    """

    def __init__(self, path: str | None) -> None:
        self._connection = sqlite3.connect(path, check_same_thread=False) if path else None
        self._lock = threading.Lock()
        self._version: int | None = None
        self._values: dict[str, dict[str, Any]] = {}

    @classmethod
    def of(cls, store: FeatureStore | None) -> UnchangedReads:
        path = sqlite_path(store)
        return cls(None if path is None else str(path))

    def values(self, view: str, ids: list[str], read: Callable[[list[str]], list[Any]]) -> list[Any]:
        """Each customer's value of `view` (what `read` makes of the store's rows for a list of customers),
        read from the store only for those not read since its last change."""
        if self._connection is None:
            return read(ids)
        with self._lock:
            version = int(self._connection.execute("PRAGMA data_version").fetchone()[0])
            if version != self._version or sum(len(v) for v in self._values.values()) > CACHE_CUSTOMERS:
                self._values, self._version = {}, version
            known = self._values.setdefault(view, {})
            missing = [c for c in dict.fromkeys(ids) if c not in known]
        if missing:
            found = dict(zip(missing, read(missing), strict=True))
            with self._lock:
                if self._version == version:
                    known.update(found)
        else:
            found = {}
        return [found[c] if c in found else known[c] for c in ids]


PUSH_LOCK_KEY = "sendwise:push-lock"
PUSH_LOCK_SECONDS = 30.0
"""How long a replica may hold the Redis push lock: one that died holding it frees it then."""
PUSH_WAIT_SECONDS = 10.0
"""How long a push waits for the lock before it gives up (the events are appended already: the next
`sendwise materialize` or ingest applies them)."""


class PushLockTimeout(RuntimeError):
    """Another replica held the push lock for longer than `PUSH_WAIT_SECONDS`."""


class PushLock:
    """One push at a time among every replica of a store: an exclusive `flock` of a file beside the SQLite store,
    or a lock in Redis (`redis.lock.Lock`: a key set only where absent, with an expiry, freed by its holder's
    token); without a store, a lock of this process."""

    def __init__(self, path: Path | None = None, client: redis.Redis | None = None) -> None:
        self.path = path
        self.client = client
        self._local = threading.Lock()

    @classmethod
    def of(cls, store: FeatureStore | None, client: redis.Redis | None) -> PushLock:
        if client is not None:
            return cls(client=client)
        path = sqlite_path(store)
        return cls() if path is None else cls(path=path.with_name(path.name + ".push-lock"))

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._local:  # threads of this process queue here, not on the file or in Redis
            if self.client is not None:
                lock = self.client.lock(PUSH_LOCK_KEY, timeout=PUSH_LOCK_SECONDS, sleep=0.002)
                if not lock.acquire(blocking=True, blocking_timeout=PUSH_WAIT_SECONDS):
                    raise PushLockTimeout(f"another replica held {PUSH_LOCK_KEY} for over {PUSH_WAIT_SECONDS:g} s")
                try:
                    yield
                finally:
                    try:
                        lock.release()
                    except redis.exceptions.LockError:  # expired while held: the next push starts over
                        logger.warning("the push lock expired before this push released it")
            elif self.path is not None:
                with self.path.open("a") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
                    yield
            else:
                yield


class RealtimeFeatures:
    """The latest-value views of one home's Feast store: `push` a batch of events, read `stopped` customers."""

    def __init__(self, store: FeatureStore | None, redis_client: redis.Redis | None = None) -> None:
        self.store = store
        self.lock = PushLock.of(store, redis_client)
        self.cache = UnchangedReads.of(store)
        self._views: dict[str, FeatureView] = {}
        self._missing_since: dict[str, float] = {}

    def _view(self, name: str) -> FeatureView | None:
        """The view as registered, read once; None where the home's store predates it (`sendwise materialize`
        registers it), looked for again after `RETRY_SECONDS` rather than at every decision."""
        if name in self._views or self.store is None:
            return self._views.get(name)
        if time.monotonic() - self._missing_since.get(name, -RETRY_SECONDS) < RETRY_SECONDS:
            return None
        try:
            self._views[name] = self.store.get_feature_view(name)
        except FeatureViewNotFoundException:
            self._missing_since[name] = time.monotonic()
            return None
        return self._views[name]

    def read(self, name: str, ids: list[str], features: tuple[str, ...]) -> pd.DataFrame:
        """The view's current rows for `ids` (customers without one left out), one bulk read."""
        view = self._view(name)
        if view is None or self.store is None or not ids:
            return pd.DataFrame(columns=[KEY, TIME, *features])
        keys = [EntityKey(join_keys=[KEY], entity_values=[Value(string_val=c)]) for c in ids]
        provider = self.store._get_provider()
        found = provider.online_read(config=self.store.config, table=view, entity_keys=keys)
        rows: list[dict[str, Any]] = []
        for customer, (stamp, values) in zip(ids, found, strict=True):
            if values is None:
                continue
            row: dict[str, Any] = {KEY: customer, TIME: stamp or datetime(1970, 1, 1, tzinfo=UTC)}
            row.update({f: feast_value_type_to_python_type(values[f]) if f in values else None for f in features})
            rows.append(row)
        frame = pd.DataFrame(rows, columns=[KEY, TIME, *features])
        frame[TIME] = pd.to_datetime(frame[TIME], utc=True).astype("datetime64[us, UTC]")
        return frame

    def push(self, checked: CheckedEvents) -> int:
        """Update the pushed customers' latest values with the batch and push them; customers updated."""
        if self.store is None:
            return 0
        updated: set[str] = set()
        site, emails = checked.frames.get("site_events"), checked.frames.get("email_events")
        email_changes = pd.concat(  # stops, and the consents of customers rows
            [
                email_state_changes(emails),
                consent_changes(checked.frames.get("customers"), checked.received_at),
            ],
            ignore_index=True,
        )
        email_changes = with_schema(email_changes, EMAIL_STATE_TABLE)
        plan = (
            (ACTIVITY_VIEW, ACTIVITY_TABLE, activity_changes(site), ACTIVITY_COLUMNS, ()),
            (EMAIL_STATE_VIEW, EMAIL_STATE_TABLE, email_changes, EMAIL_CONSENTS, EMAIL_FLAGS),
        )
        for view, table, changes, columns, flags in plan:
            if changes.empty or self._view(view) is None:
                continue
            ids = sorted(set(changes[KEY]))
            with self.lock.held():  # read, combined and written back before another replica reads them
                now = self.read(view, ids, (*columns, *flags))
                state = current(
                    accumulate(pd.concat([with_schema(now, table), changes], ignore_index=True), columns, flags)
                )
                self.store.push(PUSH_SOURCES[view], after_stored(with_schema(state, table), now), to=PushMode.ONLINE)
            updated.update(ids)
        return len(updated)

    def latest(self, ids: list[str]) -> dict[str, np.ndarray]:
        """Each customer's latest activity (`ACTIVITY_TIMES` as float seconds, NaN where none; `ACTIVITY_TEXTS`,
        None where none) as the online store has it, pushed events included: one bulk read per decision of the
        customers not read since the store last changed (`UnchangedReads`), read straight from the values."""
        found = {name: np.full(len(ids), np.nan) for name in ACTIVITY_TIMES}
        found.update({name: np.full(len(ids), None, dtype=object) for name in ACTIVITY_TEXTS})
        view = self._view(ACTIVITY_VIEW)
        if view is None or self.store is None or not ids:
            return found
        try:
            rows = self.cache.values(ACTIVITY_VIEW, ids, lambda missing: self._read_activity(view, missing))
        except Exception:  # the online store down: decide without the latest values, as without any activity
            logger.warning("reading the latest activity from the online store failed", exc_info=True)
            return found
        for i, row in enumerate(rows):
            if row is not NO_ACTIVITY:
                found[ACTIVITY_TIMES[0]][i], found[ACTIVITY_TIMES[1]][i] = row[0], row[1]
                found[ACTIVITY_TEXTS[0]][i], found[ACTIVITY_TEXTS[1]][i] = row[2], row[3]
        return found

    def _online_read(self, view: FeatureView, ids: list[str]) -> list[Any]:
        assert self.store is not None
        keys = [EntityKey(join_keys=[KEY], entity_values=[Value(string_val=c)]) for c in ids]
        return list(self.store._get_provider().online_read(config=self.store.config, table=view, entity_keys=keys))

    def _read_activity(self, view: FeatureView, ids: list[str]) -> list[Activity]:
        read: list[Activity] = []
        for _, values in self._online_read(view, ids):
            if values is None:
                read.append(NO_ACTIVITY)
                continue
            times = [
                values[n].double_val if n in values and values[n].WhichOneof("val") == "double_val" else np.nan
                for n in ACTIVITY_TIMES
            ]
            texts = [
                values[n].string_val or None if n in values and values[n].WhichOneof("val") == "string_val" else None
                for n in ACTIVITY_TEXTS
            ]
            read.append((times[0], times[1], texts[0], texts[1]))
        return read

    def email_state(self, ids: list[str]) -> EmailState:
        """Per customer: whether email to them has stopped (unsubscribe, complaint, hard bounce) and the consent
        a pushed customers row gave, as far as the online store knows. Read straight from the values (no
        frame), for the customers not read since the store last changed: every decision pays for it."""
        view = self._view(EMAIL_STATE_VIEW)
        if view is None or self.store is None or not ids:
            return EmailState.none(len(ids))

        def read(missing: list[str]) -> list[tuple[bool, float, float]]:
            return [_state_of(values) for _, values in self._online_read(view, missing)]

        try:
            found = self.cache.values(EMAIL_STATE_VIEW, ids, read)
        except Exception:  # the online store down: decide from the batch's eligibility, as the snapshot does
            logger.warning("reading the email state from the online store failed", exc_info=True)
            return EmailState.none(len(ids))
        return EmailState(
            stopped=np.fromiter((f[0] for f in found), dtype=bool, count=len(ids)),
            consent_email=np.fromiter((f[1] for f in found), dtype=np.float64, count=len(ids)),
            consent_profiling=np.fromiter((f[2] for f in found), dtype=np.float64, count=len(ids)),
        )

    def stopped(self, ids: list[str]) -> np.ndarray:
        """Per customer: True where email to them has stopped, pushed events included."""
        return self.email_state(ids).stopped


def after_stored(state: pd.DataFrame, stored: pd.DataFrame) -> pd.DataFrame:
    """`state` with each row's time moved a microsecond past the stored row it replaces where it is not later.

    A row's time is that of the latest event it holds, so an event older than the customer's stored state (a
    purchase reported after a later visit) leaves it unchanged, and Feast's Redis online store skips a write
    that is not newer than what it holds: the purchase would be lost. The values are the ones to keep (they
    are combined with the stored ones), so they go with a time just after it."""
    if stored.empty or state.empty:
        return state
    previous = state[KEY].map(stored.drop_duplicates(KEY, keep="last").set_index(KEY)[TIME])
    behind = (previous.notna() & (state[TIME] <= previous)).to_numpy()
    if behind.any():
        state = state.copy()
        state.loc[behind, TIME] = (previous[behind] + pd.Timedelta(microseconds=1)).to_numpy()
    return state


def _state_of(values: dict[str, Value] | None) -> tuple[bool, float, float]:
    """(stopped, email consent, profiling consent) of one customer's email-state values (NaN: none pushed)."""
    if values is None:
        return False, np.nan, np.nan
    stopped = any(values[f].float_val > 0 for f in EMAIL_FLAGS if f in values)
    consents = [
        values[f].float_val if f in values and values[f].WhichOneof("val") == "float_val" else np.nan
        for f in EMAIL_CONSENTS
    ]
    return stopped, consents[0], consents[1]
