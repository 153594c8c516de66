"""What each customer was sent and shown before a window: what frequency caps and no-repeat rules count."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from features.labels import message_sends
from sendwise.raw import load_table
from sendwise.settings import Settings
from serving.decision_log import DecisionLogReader

NANOS_PER_DAY = 86_400 * 10**9


def _nanos(stamp: datetime | pd.Timestamp) -> int:
    return int(pd.Timestamp(stamp).value)


def _nanos_column(times: pd.Series) -> np.ndarray:
    """UTC timestamps (any unit) as int64 nanoseconds since the epoch."""
    stamps = pd.to_datetime(times, utc=True).dt.tz_convert(None).to_numpy().astype("datetime64[ns]")
    return np.asarray(stamps.view(np.int64))


class History(Protocol):
    """What frequency caps and no-repeat rules ask of past sends: `SendHistory` on one machine, or
    `serving.history_store.SharedHistory` over the Redis that replicas share."""

    def sends_before(self, customer_ids: list[str], start: datetime, days: int) -> tuple[np.ndarray, np.ndarray]:
        """(sends in the raw store, sends decided by sendwise since it ends) in the `days` before `start`."""
        ...

    def offers_shown_before(self, customer_ids: list[str], start: datetime, days: int) -> list[set[str]]:
        """The offers each customer was exposed to in the `days` before `start` (raw exposures, then decisions)."""
        ...


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
        return int(part.stop - part.start)

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
    read as it grows, from the days `log_since` on (by the day a decision was made): a rule that reaches
    further back reads the older days the first time it is asked.
    """

    def __init__(
        self,
        decisions_dir: Path,
        sends: _Timeline,
        exposures: _Timeline,
        sends_end: int | None = None,
        exposures_end: int | None = None,
        known_decisions: set[str] | None = None,
        log_since: date | None = None,
    ) -> None:
        self.log = DecisionLogReader(decisions_dir, log_since)
        self.sends = sends
        self.exposures = exposures
        self.sends_end = sends_end
        self.exposures_end = exposures_end
        self.known_decisions = known_decisions or set()
        self._decided: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def empty(cls, decisions_dir: Path) -> SendHistory:
        """No raw store: only what sendwise decides counts."""
        return cls(decisions_dir, _Timeline.empty(), _Timeline.empty())

    @classmethod
    def from_raw(cls, settings: Settings, now: datetime | None = None) -> SendHistory:
        """The raw store's sends and exposures, and the decision log of the `history_days` before `now`."""
        log_since = ((now or datetime.now(UTC)) - timedelta(days=settings.history_days)).date()
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
        return cls(settings.decisions_dir, sends, exposures, sends_end, exposures_end, known, log_since)

    def _read_log(self, low: int) -> None:
        """The log's new sends, reaching back to the day of `low` (ns since the epoch) if not read yet."""
        self.log.reach_back(pd.Timestamp(low, tz=UTC).date())
        for send in self.log.new_sends():
            if send.decision_id not in self.known_decisions:
                self._decided.setdefault(send.customer_id, []).append((send.at, send.offers))

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
            self._read_log(low)
            raw = np.array([self.sends.count(c, low, high) for c in customer_ids], dtype=np.int64)
            decided = np.array([len(self._logged(c, low, high, self.sends_end)) for c in customer_ids], dtype=np.int64)
        return raw, decided

    def offers_shown_before(self, customer_ids: list[str], start: datetime, days: int) -> list[set[str]]:
        """The offers each customer was exposed to in the `days` before `start` (raw exposures, then decisions)."""
        high = _nanos(start)
        low = high - days * NANOS_PER_DAY
        with self._lock:
            self._read_log(low)
            shown = []
            for c in customer_ids:
                offers = self.exposures.labels_between(c, low, high)
                for logged in self._logged(c, low, high, self.exposures_end):
                    offers.update(logged)
                shown.append(offers)
        return shown
