"""Past decisions in Redis (`SENDWISE_ONLINE_STORE=redis`): what frequency caps, no-repeat rules and render by
id need of them, shared by every replica on one Redis (`SENDWISE_REDIS_URL`, its db number honoured).

`SharedHistory` answers what `serving.history.SendHistory` answers on one machine, without any replica loading
the raw store or reading the others' decision logs: the ESP's sends and offer exposures are loaded into Redis
by the pipeline host (`load_raw_history`, after materializing the features), and the replica that decides
writes each decision into Redis (`SharedHistory.record`, one transaction per chunk of a batch, before its lines
go to the log and before the answer). The counting rule is `SendHistory`'s: a decided send counts only after
the raw store's sends end and only if its decision_id is not among the raw sends.

Keys (customer and decision ids as given; times as milliseconds since the epoch):
- `sendwise:sent:<customer>`: sorted set, the raw store's sends scored by send time; members `d:<decision_id>`
  (a send that carried one) or `m:<message_id>`.
- `sendwise:shown:<customer>`: sorted set, the raw store's offer exposures scored by time; members
  `<time>:<offer_id>`.
- `sendwise:decided:<customer>`: sorted set, the sends sendwise decided, scored by `send_at`; members the JSON
  `[decision_id, [offer ids the email carries]]`.
- `sendwise:raw-end`: hash, `sent` and `shown`: where the raw store's sends and exposures end.
- `sendwise:decision:<decision_id>`: the decision's log entry (JSON, with its render facts): `/v1/render`.
- `sendwise:decisions:<customer>`: set, the ids of the customer's decisions (what erasure removes).

The three sorted sets keep `history_days` (`SENDWISE_HISTORY_DAYS`, the longest look-back of a cap or a
no-repeat rule they answer) before their newest entry and expire `history_days` + 8 days after their last
write (a send may be a week after its decision); the raw ones are written again by every load. A decision
and the set naming it expire `render_days` + 1 day after it was made: for that last day `/v1/render` still
says when it was made and that it expired, as the log's index does; after it, that it is unknown.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import numpy as np
import orjson
import pandas as pd
import redis
from tqdm import tqdm

from features.labels import message_sends
from sendwise.raw import load_table
from sendwise.settings import Settings
from serving.decision_log import LoggedDecision, logged_send

PREFIX = "sendwise:"
RAW_END = f"{PREFIX}raw-end"
MS_PER_DAY = 86_400_000
SEND_AFTER_DECISION_DAYS = 8
"""Days a decided send may lie after the decision (a window starts at most a day or so ahead and lasts at most
168 hours): how much longer than `history_days` a history key lives after its last write."""
LOAD_CHUNK = 2_000
"""Customers written per transaction when the raw history is loaded."""


def sent_key(customer_id: str) -> str:
    return f"{PREFIX}sent:{customer_id}"


def shown_key(customer_id: str) -> str:
    return f"{PREFIX}shown:{customer_id}"


def decided_key(customer_id: str) -> str:
    return f"{PREFIX}decided:{customer_id}"


def decision_key(decision_id: str) -> str:
    return f"{PREFIX}decision:{decision_id}"


def decisions_of_key(customer_id: str) -> str:
    return f"{PREFIX}decisions:{customer_id}"


def connect(settings: Settings) -> redis.Redis:
    """A client of `settings.redis_url` (its db number honoured)."""
    return redis.Redis.from_url(settings.redis_url)


def _ms(stamp: datetime) -> int:
    return int(pd.Timestamp(stamp).value // 1_000_000)


def _ms_column(times: pd.Series) -> np.ndarray:
    stamps = pd.to_datetime(times, utc=True).dt.tz_convert(None).to_numpy().astype("datetime64[ms]")
    return np.asarray(stamps.view(np.int64))


def history_ttl_seconds(settings: Settings) -> int:
    return (settings.history_days + SEND_AFTER_DECISION_DAYS) * 86_400


def decision_ttl_seconds(settings: Settings) -> int:
    return (settings.render_days + 1) * 86_400


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@dataclass(frozen=True)
class _Decided:
    decision_id: str
    at: int
    offers: tuple[str, ...]


def _decided_entries(found: Iterable[tuple[bytes, float]]) -> list[_Decided]:
    made = []
    for member, score in found:
        decision_id, offers = orjson.loads(member)
        made.append(_Decided(str(decision_id), int(score), tuple(str(o) for o in offers)))
    return made


class SharedHistory:
    """Frequency caps, no-repeat rules and render by id over one Redis: every replica reads and writes the same."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client if client is not None else connect(settings)
        self.history_ms = settings.history_days * MS_PER_DAY

    # --- reading, for a batch's customers at once ---------------------------------------------------
    def _read(
        self, customer_ids: list[str], start: datetime, days: int, raw_key: str
    ) -> tuple[int | None, list[set[str]], list[list[Any]], list[list[_Decided]]]:
        """(where the raw store's `raw_key` ends, each customer's raw decision ids, their raw entries and their
        decided sends in the `days` before `start`), in one round trip."""
        high = _ms(start)
        low = high - days * MS_PER_DAY
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(RAW_END, raw_key)
        for c in customer_ids:
            pipe.zrange(sent_key(c), 0, -1)
            if raw_key == "shown":
                pipe.zrangebyscore(shown_key(c), low, f"({high}")
            else:
                pipe.zrangebyscore(sent_key(c), low, f"({high}")
            pipe.zrangebyscore(decided_key(c), low, f"({high}", withscores=True)
        found = pipe.execute()
        end = None if found[0] is None else int(found[0])
        n = len(customer_ids)
        known = [{t[2:] for m in found[1 + 3 * i] if (t := _text(m)).startswith("d:")} for i in range(n)]
        raw = [found[2 + 3 * i] for i in range(n)]
        decided = [_decided_entries(found[3 + 3 * i]) for i in range(n)]
        return end, known, raw, decided

    @staticmethod
    def _counted(decided: list[_Decided], known: set[str], end: int | None) -> list[_Decided]:
        """The decided sends that count: after the raw store ends, and not among its sends."""
        return [d for d in decided if (end is None or d.at > end) and d.decision_id not in known]

    def sends_before(self, customer_ids: list[str], start: datetime, days: int) -> tuple[np.ndarray, np.ndarray]:
        """(sends in the raw store, sends decided by sendwise since it ends) in the `days` before `start`."""
        end, known, raw, decided = self._read(customer_ids, start, days, "sent")
        from_raw = np.array([len(r) for r in raw], dtype=np.int64)
        from_log = np.array(
            [len(self._counted(d, k, end)) for d, k in zip(decided, known, strict=True)], dtype=np.int64
        )
        return from_raw, from_log

    def offers_shown_before(self, customer_ids: list[str], start: datetime, days: int) -> list[set[str]]:
        """The offers each customer was exposed to in the `days` before `start` (raw exposures, then decisions)."""
        end, known, raw, decided = self._read(customer_ids, start, days, "shown")
        shown = []
        for exposures, sends, ids in zip(raw, decided, known, strict=True):
            offers = {_text(m).split(":", 1)[1] for m in exposures}
            for send in self._counted(sends, ids, end):
                offers.update(send.offers)
            shown.append(offers)
        return shown

    # --- writing what the replica decides ----------------------------------------------------------
    def record(self, entries: list[dict[str, object]], lines: bytes) -> None:
        """A chunk of a batch's decisions (the log's entries and their JSON lines), in one transaction: each
        decision under its id for render by id, and each send in its customer's decided sends."""
        encoded = lines.split(b"\n")
        decision_ttl, history_ttl = decision_ttl_seconds(self.settings), history_ttl_seconds(self.settings)
        newest: dict[str, int] = {}
        pipe = self.client.pipeline(transaction=True)
        for entry, line in zip(entries, encoded, strict=False):
            decision_id, customer_id = str(entry["decision_id"]), str(entry["customer_id"])
            pipe.set(decision_key(decision_id), line, ex=decision_ttl)
            pipe.sadd(decisions_of_key(customer_id), decision_id)
            pipe.expire(decisions_of_key(customer_id), decision_ttl)
            send = logged_send(entry)
            if send is None:
                continue
            at = send.at // 1_000_000
            pipe.zadd(decided_key(customer_id), {orjson.dumps([decision_id, list(send.offers)]): at})
            newest[customer_id] = max(at, newest.get(customer_id, at))
        for customer_id, at in newest.items():
            pipe.zremrangebyscore(decided_key(customer_id), "-inf", f"({at - self.history_ms}")
            pipe.expire(decided_key(customer_id), history_ttl)
        pipe.execute()

    def find(self, decision_id: str) -> LoggedDecision | None:
        """The decision with this id as the log keeps it, or None (never made, erased, or expired)."""
        value = cast("bytes | None", self.client.get(decision_key(decision_id)))
        if value is None:
            return None
        entry = orjson.loads(value)
        if not isinstance(entry, dict) or entry.get("decision_id") != decision_id:
            return None
        return LoggedDecision(entry, datetime.fromisoformat(str(entry["decided_at"])))

    # --- erasure -----------------------------------------------------------------------------------
    def erase(self, customer_ids: Iterable[str]) -> int:
        """Remove every key of the customers (their history and their decisions); keys removed."""
        ids = sorted(set(customer_ids))
        pipe = self.client.pipeline(transaction=False)
        for c in ids:
            pipe.smembers(decisions_of_key(c))
        decided = pipe.execute()
        keys: list[str] = []
        for c, members in zip(ids, decided, strict=True):
            keys += [sent_key(c), shown_key(c), decided_key(c), decisions_of_key(c)]
            keys += [decision_key(_text(m)) for m in members]
        removed = 0
        for lo in range(0, len(keys), 10_000):
            removed += int(cast(int, self.client.delete(*keys[lo : lo + 10_000])))
        return removed


# --- the raw store's sends and exposures, loaded by the pipeline host -------------------------------------
@dataclass(frozen=True)
class RawHistoryLoad:
    """What `load_raw_history` wrote: customers, sends and exposures, and stale keys removed."""

    customers: int
    sends: int
    exposures: int
    removed_keys: int


def _grouped(customers: pd.Series, members: Sequence[str], scores: np.ndarray) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for c, m, s in zip(customers.astype(str).tolist(), members, scores.tolist(), strict=True):
        found[c][m] = s
    return found


def _raw_sends(settings: Settings) -> tuple[dict[str, dict[str, int]], int | None]:
    events = load_table(settings, "email_events")
    if events is None or not len(events):
        return {}, None
    table = message_sends(events)
    if not len(table):
        return {}, None
    at = _ms_column(table["send_at"])
    end = int(at.max())
    keep = at >= end - settings.history_days * MS_PER_DAY
    table = table[keep]
    members = [
        f"d:{d}" if isinstance(d, str) and d else f"m:{m}"
        for d, m in zip(table["decision_id"].tolist(), table["message_id"].tolist(), strict=True)
    ]
    return _grouped(table["customer_id"], members, at[keep]), end


def _raw_exposures(settings: Settings) -> tuple[dict[str, dict[str, int]], int | None]:
    events = load_table(settings, "offer_events")
    if events is None or not len(events):
        return {}, None
    shown = events[events["event"] == "exposed"]
    if not len(shown):
        return {}, None
    at = _ms_column(shown["occurred_at"])
    end = int(at.max())
    keep = at >= end - settings.history_days * MS_PER_DAY
    shown = shown[keep]
    members = [f"{t}:{o}" for t, o in zip(at[keep].tolist(), shown["offer_id"].astype(str).tolist(), strict=True)]
    return _grouped(shown["customer_id"], members, at[keep]), end


def _stale_keys(client: redis.Redis, pattern: str, written: set[str]) -> list[str]:
    return [k for key in client.scan_iter(match=pattern, count=1_000) if (k := _text(key)) not in written]


def load_raw_history(settings: Settings, progress: bool = True) -> RawHistoryLoad:
    """Write the raw store's sends and offer exposures of the last `history_days` before each ends into Redis,
    replacing what an earlier load wrote (what the pipeline and `sendwise materialize` call on the host that
    holds the raw store; no-op counts without Redis)."""
    if settings.online_store != "redis":
        return RawHistoryLoad(0, 0, 0, 0)
    client = connect(settings)
    sends, sends_end = _raw_sends(settings)
    exposures, exposures_end = _raw_exposures(settings)
    ttl = history_ttl_seconds(settings)
    customers = sorted(set(sends) | set(exposures))
    written: set[str] = set()
    with tqdm(total=len(customers), desc="send history into Redis", unit="customer", disable=not progress) as bar:
        for lo in range(0, len(customers), LOAD_CHUNK):
            pipe = client.pipeline(transaction=True)
            for c in customers[lo : lo + LOAD_CHUNK]:
                for key, mapping in ((sent_key(c), sends.get(c)), (shown_key(c), exposures.get(c))):
                    pipe.delete(key)
                    if mapping:
                        pipe.zadd(key, cast("dict[str, float]", mapping))
                        pipe.expire(key, ttl)
                        written.add(key)
            pipe.execute()
            bar.update(min(LOAD_CHUNK, len(customers) - lo))
    ends = {name: end for name, end in (("sent", sends_end), ("shown", exposures_end)) if end is not None}
    pipe = client.pipeline(transaction=True)
    pipe.delete(RAW_END)
    if ends:
        pipe.hset(RAW_END, mapping=cast("dict[str | bytes, str | bytes | int | float]", ends))
        pipe.expire(RAW_END, ttl)
    pipe.execute()
    stale = _stale_keys(client, f"{PREFIX}sent:*", written) + _stale_keys(client, f"{PREFIX}shown:*", written)
    if stale:
        client.delete(*stale)
    return RawHistoryLoad(
        customers=len(customers),
        sends=sum(len(m) for m in sends.values()),
        exposures=sum(len(m) for m in exposures.values()),
        removed_keys=len(stale),
    )
