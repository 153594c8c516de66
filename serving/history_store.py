"""Past decisions in Redis (`SENDWISE_ONLINE_STORE=redis`): what frequency caps, no-repeat rules and render by
id need of them, shared by every replica on one Redis (`SENDWISE_REDIS_URL`, its db number honoured).

`SharedHistory` answers what `serving.history.SendHistory` answers on one machine, without any replica loading
the raw store or reading the others' decision logs: the ESP's sends and offer exposures are loaded into Redis
by the pipeline host (`load_raw_history`, after materializing the features), and the replica that decides
writes each decision into Redis (`SharedHistory.recording`, one script per chunk of a batch, sent before its
lines go to the log and confirmed before the answer). The counting rule is `SendHistory`'s: a decided send
counts only after the raw store's sends end and only if its decision_id is not among the raw sends.

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

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis
from redis.exceptions import NoScriptError
from tqdm import tqdm

from features.store import memory_bounds, spill_dir, sql_quoted
from sendwise.raw import table_path
from sendwise.settings import Settings
from serving.decision_log import DecisionSink, LoggedDecision, logged_send
from serving.errors import PastDecisionsUnavailable
from serving.redis_features import redis_location

logger = logging.getLogger(__name__)

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


def history_ttl_seconds(settings: Settings) -> int:
    return (settings.history_days + SEND_AFTER_DECISION_DAYS) * 86_400


def decision_ttl_seconds(settings: Settings) -> int:
    return (settings.render_days + 1) * 86_400


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


READ_SCRIPT = """
local mode, low, high = ARGV[1], ARGV[2], '(' .. ARGV[3]
local ends = redis.call('HGET', KEYS[1], mode)
local raw_end = ends and tonumber(ends) or nil
local out = {}
for i = 2, #KEYS, 3 do
  local sent, raw_key, decided = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  local mine = redis.call('ZRANGEBYSCORE', decided, low, high, 'WITHSCORES')
  local counted = {}
  if #mine > 0 then
    local known = {}
    for _, m in ipairs(redis.call('ZRANGE', sent, 0, -1)) do
      if string.sub(m, 1, 2) == 'd:' then known[string.sub(m, 3)] = true end
    end
    for j = 1, #mine, 2 do
      local entry = cjson.decode(mine[j])
      if (raw_end == nil or tonumber(mine[j + 1]) > raw_end) and not known[entry[1]] then
        counted[#counted + 1] = entry
      end
    end
  end
  if mode == 'sent' then
    out[#out + 1] = redis.call('ZCOUNT', raw_key, low, high)
    out[#out + 1] = #counted
  else
    local offers = {}
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', raw_key, low, high)) do
      offers[#offers + 1] = string.sub(m, string.find(m, ':', 1, true) + 1)
    end
    for _, entry in ipairs(counted) do
      for _, offer in ipairs(entry[2]) do offers[#offers + 1] = offer end
    end
    out[#out + 1] = offers
  end
end
return out
"""
"""Per customer (KEYS: `raw-end`, then each customer's sent, raw (`sent` or `shown`) and decided keys; ARGV:
the mode, low and high in ms): with mode `sent` the raw sends in [low, high) and the decided sends that count,
with mode `shown` the offers of the raw exposures and of the decided sends that count. A decided send counts
after the raw store's end (of that mode) and when its decision_id is not among the raw sends. One command per
chunk of customers: a pipelined command per key cost 70 µs of Python each on a busy two-core machine."""

RECORD_SCRIPT = """
local decision_ttl, history_ttl, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local newest = {}
for i = 0, #KEYS / 3 - 1 do
  local line, id, member, at = ARGV[4 + 4 * i], ARGV[5 + 4 * i], ARGV[6 + 4 * i], tonumber(ARGV[7 + 4 * i])
  local decision, decisions, decided = KEYS[1 + 3 * i], KEYS[2 + 3 * i], KEYS[3 + 3 * i]
  redis.call('SET', decision, line, 'EX', decision_ttl)
  redis.call('SADD', decisions, id)
  redis.call('EXPIRE', decisions, decision_ttl)
  if member ~= '' then
    redis.call('ZADD', decided, at, member)
    if newest[decided] == nil or newest[decided] < at then newest[decided] = at end
  end
end
for decided, at in pairs(newest) do
  redis.call('ZREMRANGEBYSCORE', decided, '-inf', string.format('(%d', at - keep))
  redis.call('EXPIRE', decided, history_ttl)
end
return #KEYS / 3
"""
"""Each decision (KEYS: its decision, its customer's decisions and decided keys; ARGV: the decision TTL, the
history TTL and the history kept in ms, then per decision its line, id, decided member (empty where it is not a
send) and send time in ms), atomically: a script runs whole, as a transaction would, in one command."""

READ_CHUNK = 2_000
"""Customers one read script takes: Redis runs nothing else while a script runs."""


class SharedHistory:
    """Frequency caps, no-repeat rules and render by id over one Redis: every replica reads and writes the same.
    Every read and write of a batch goes to Redis as a script over the keys of its customers, so this needs one
    Redis, not a Redis Cluster (whose scripts may touch the keys of one slot only)."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client if client is not None else connect(settings)
        self.history_ms = settings.history_days * MS_PER_DAY
        self._read_script = self.client.register_script(READ_SCRIPT)
        self._record_script = self.client.register_script(RECORD_SCRIPT)
        self.record_script_loaded = False
        """Whether this replica loaded `RECORD_SCRIPT` into Redis: a batch's records are sent before any answer
        is read, so a missing script is not found out chunk by chunk."""
        self.where = redis_location(settings.redis_url)
        self.degraded_reasons: list[str] = []
        """Set while Redis cannot be reached: caps and no-repeat rules then count no past decision (the answers
        say so, degraded), decisions still go to the log file, and render by id answers 503 until it is back."""

    def _failed(self, error: redis.RedisError) -> None:
        if not self.degraded_reasons:
            logger.error("past decisions in Redis at %s cannot be reached (%s): degraded", self.where, error)
        self.degraded_reasons = [
            f"past decisions unavailable: the Redis at {self.where} cannot be reached, so frequency caps and "
            "no-repeat rules counted no earlier decision and these decisions are only in this replica's log file"
        ]

    def _reached(self) -> None:
        if self.degraded_reasons:
            logger.warning("past decisions in Redis at %s can be reached again", self.where)
            self.degraded_reasons = []

    # --- reading, for a batch's customers at once ---------------------------------------------------
    def _read(self, customer_ids: list[str], start: datetime, days: int, mode: str) -> list[Any]:
        high = _ms(start)
        low = high - days * MS_PER_DAY
        found: list[Any] = []
        try:
            for lo in range(0, len(customer_ids), READ_CHUNK):
                keys = [RAW_END]
                for c in customer_ids[lo : lo + READ_CHUNK]:
                    keys += [sent_key(c), sent_key(c) if mode == "sent" else shown_key(c), decided_key(c)]
                found += self._read_script(keys=keys, args=[mode, low, high])
        except redis.RedisError as error:
            self._failed(error)
            return [0, 0] * len(customer_ids) if mode == "sent" else [[] for _ in customer_ids]
        self._reached()
        return found

    def sends_before(self, customer_ids: list[str], start: datetime, days: int) -> tuple[np.ndarray, np.ndarray]:
        """(sends in the raw store, sends decided by sendwise since it ends) in the `days` before `start`."""
        counts = np.array(self._read(customer_ids, start, days, "sent"), dtype=np.int64).reshape(-1, 2)
        return counts[:, 0].copy(), counts[:, 1].copy()

    def offers_shown_before(self, customer_ids: list[str], start: datetime, days: int) -> list[set[str]]:
        """The offers each customer was exposed to in the `days` before `start` (raw exposures, then decisions)."""
        return [{_text(o) for o in offers} for offers in self._read(customer_ids, start, days, "shown")]

    # --- writing what the replica decides ----------------------------------------------------------
    def record(self, entries: list[dict[str, object]], lines: bytes) -> None:
        """A chunk of a batch's decisions (the log's entries and their JSON lines), in one atomic script: each
        decision under its id for render by id, and each send in its customer's decided sends."""
        with self.recording() as sink:
            sink(entries, lines)

    @contextmanager
    def recording(self) -> Iterator[DecisionSink]:
        """A sink for one batch's chunks (`DecisionLog.append`'s `sink`): each chunk's script is sent as soon
        as the chunk is made and its answer read once the next chunk is sent; every answer is read before this
        ends, so that a batch is in Redis before its answer goes out. Redis runs a chunk's script while the next
        chunk is made and written to the log, where sending a chunk and waiting for its answer in turn left each
        side idle while the other worked. A Redis that fails degrades the answers; the log file still gets every
        line, so nothing decided is lost."""
        pending = _PendingRecords(self)
        try:
            yield pending.send
        finally:
            error = pending.finish()
            if error is not None:
                self._failed(error)
            elif pending.sent:
                self._reached()

    def script_arguments(self, entries: list[dict[str, object]], lines: bytes) -> tuple[list[str], list[Any]]:
        """The keys and arguments of `RECORD_SCRIPT` for a chunk of decisions and their JSON lines."""
        keys: list[str] = []
        args: list[bytes | str | int] = [
            decision_ttl_seconds(self.settings),
            history_ttl_seconds(self.settings),
            self.history_ms,
        ]
        for entry, line in zip(entries, lines.split(b"\n"), strict=False):
            decision_id, customer_id = str(entry["decision_id"]), str(entry["customer_id"])
            keys += [decision_key(decision_id), decisions_of_key(customer_id), decided_key(customer_id)]
            send = logged_send(entry)
            if send is None:
                args += [line, decision_id, b"", 0]
            else:
                args += [line, decision_id, orjson.dumps([decision_id, list(send.offers)]), send.at // 1_000_000]
        return keys, args

    def find(self, decision_id: str) -> LoggedDecision | None:
        """The decision with this id as the log keeps it, or None (never made, erased, or expired)."""
        try:
            value = cast("bytes | None", self.client.get(decision_key(decision_id)))
        except redis.RedisError as error:
            self._failed(error)
            raise PastDecisionsUnavailable(self.where) from error
        self._reached()
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


class _PendingRecords:
    """The record scripts of one batch sent on one connection, their answers not yet read."""

    def __init__(self, history: SharedHistory) -> None:
        self.history = history
        self.script = history._record_script
        self.connection: Any = None
        self.sent = 0
        self.unread: deque[tuple[list[str], list[Any]]] = deque()  # at most two chunks' keys and arguments held
        self.error: redis.RedisError | None = None

    def send(self, entries: list[dict[str, object]], lines: bytes) -> None:
        keys, args = self.history.script_arguments(entries, lines)
        if not keys or self.error is not None:  # after a failure the rest goes to the log file only
            return
        try:
            if self.connection is None:
                if not self.history.record_script_loaded:  # EVALSHA of a script Redis lacks fails
                    self.history.client.script_load(RECORD_SCRIPT)
                    self.history.record_script_loaded = True
                self.connection = self.history.client.connection_pool.get_connection()
            self.connection.send_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
        except redis.RedisError as error:
            self.error = error
            if self.connection is not None:
                self.connection.disconnect()  # a command may be half sent: the connection is not reused
            return
        self.sent += 1
        self.unread.append((keys, args))
        if len(self.unread) > 1:  # the chunk before this one has had the time this one took to be made
            self._read(1)

    def _read(self, answers: int) -> None:
        """Read the oldest unread answers: a script Redis no longer has is loaded and run again; an error answer
        is kept (the connection reads on); a broken connection stops the reading and is let go."""
        try:
            for _ in range(answers):
                keys, args = self.unread.popleft()
                try:
                    self.connection.read_response()
                except NoScriptError:  # Redis restarted or its scripts were flushed: run it the usual way
                    self.script(keys=keys, args=args)
                except redis.ResponseError as error:
                    self.error = self.error or error
        except redis.RedisError as error:
            self.error = self.error or error
            self.unread.clear()
            self.connection.disconnect()  # answers may be left unread: the connection is not reused

    def finish(self) -> redis.RedisError | None:
        """Read every answer left; the first error, if any."""
        if self.connection is None:
            return self.error
        try:
            self._read(len(self.unread))
        finally:
            self.history.client.connection_pool.release(self.connection)
        return self.error


# --- the raw store's sends and exposures, loaded by the pipeline host -------------------------------------
@dataclass(frozen=True)
class RawHistoryLoad:
    """What `load_raw_history` wrote: customers, sends and exposures, and stale keys removed."""

    customers: int
    sends: int
    exposures: int
    removed_keys: int


SENDS_SQL = """
CREATE TEMP TABLE sends AS
SELECT CAST(customer_id AS VARCHAR) AS customer_id, CAST(message_id AS VARCHAR) AS message_id,
       CAST({decision} AS VARCHAR) AS decision_id,
       epoch_us(timezone('UTC', CAST(occurred_at AS TIMESTAMPTZ))) // 1000 AS at_ms
FROM read_parquet('{path}')
WHERE event IN ('sent', 'delivered')
QUALIFY row_number() OVER (
    PARTITION BY message_id ORDER BY event <> 'sent', occurred_at, customer_id, decision_id
) = 1
"""
"""A message's send as `features.labels.message_sends` finds it: its first `sent` event, else its first
`delivered` one."""

EXPOSURES_SQL = """
CREATE TEMP TABLE shown AS
SELECT CAST(customer_id AS VARCHAR) AS customer_id, CAST(offer_id AS VARCHAR) AS offer_id,
       epoch_us(timezone('UTC', CAST(occurred_at AS TIMESTAMPTZ))) // 1000 AS at_ms
FROM read_parquet('{path}')
WHERE event = 'exposed'
"""

EMPTY = {
    "sends": "CREATE TEMP TABLE sends (customer_id VARCHAR, message_id VARCHAR, decision_id VARCHAR, at_ms BIGINT)",
    "shown": "CREATE TEMP TABLE shown (customer_id VARCHAR, offer_id VARCHAR, at_ms BIGINT)",
}
"""The tables of a raw store that never ingested email or offer events."""

HISTORY_SQL = """
SELECT customer_id, s.members AS sent, s.ats AS sent_at, e.members AS shown, e.ats AS shown_at
FROM (
    SELECT customer_id, list(CASE WHEN coalesce(decision_id, '') <> '' THEN 'd:' || decision_id
                                  ELSE 'm:' || message_id END) AS members, list(at_ms) AS ats
    FROM sends WHERE at_ms >= {sends_from} GROUP BY customer_id
) s
FULL OUTER JOIN (
    SELECT customer_id, list(CAST(at_ms AS VARCHAR) || ':' || offer_id) AS members, list(at_ms) AS ats
    FROM shown WHERE at_ms >= {shown_from} GROUP BY customer_id
) e USING (customer_id)
ORDER BY customer_id
"""
"""A row per customer with raw sends or exposures in their windows, in customer order: each set's members and
their times (milliseconds)."""


def _raw_history(settings: Settings) -> tuple[pa.Table, int | None, int | None]:
    """Every customer's raw sends and exposures of the last `history_days` before each ends (`HISTORY_SQL`), and
    where they end. DuckDB reads the raw store's files and keeps each message's send, capped at
    `SENDWISE_OFFLINE_MEMORY_GB` and spilling beside Feast's store past it: a million customers' 70 million email
    events held as a pandas frame took this step past 16 GB. DuckDB is imported here: a replica never loads the
    history, and the library is about 10 MB resident."""
    import duckdb

    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")  # a time without a zone is UTC, as everywhere in sendwise
    for statement in memory_bounds(settings.offline_memory_gb, spill_dir(settings.feast_dir)):
        connection.execute(statement)
    ends: dict[str, int | None] = {"sends": None, "shown": None}
    try:
        for name, table, sql in (("sends", "email_events", SENDS_SQL), ("shown", "offer_events", EXPOSURES_SQL)):
            path = table_path(settings, name=table)
            columns = pq.read_schema(path).names if path.exists() else []
            decision = "decision_id" if "decision_id" in columns else "NULL"
            connection.execute(sql.format(path=sql_quoted(path), decision=decision) if columns else EMPTY[name])
            ((end,),) = cast("list[tuple[int | None]]", connection.execute(f"SELECT max(at_ms) FROM {name}").fetchall())
            ends[name] = end
        window = settings.history_days * MS_PER_DAY
        rows = connection.sql(  # a relation's Arrow, not a DB-API result's (which copies the rows once more)
            HISTORY_SQL.format(sends_from=(ends["sends"] or 0) - window, shown_from=(ends["shown"] or 0) - window)
        ).to_arrow_table()
    finally:
        connection.close()
    return rows, ends["sends"], ends["shown"]


def _stale_keys(client: redis.Redis, pattern: str, written: set[str]) -> list[str]:
    return [k for key in client.scan_iter(match=pattern, count=1_000) if (k := _text(key)) not in written]


def load_raw_history(settings: Settings, progress: bool = True) -> RawHistoryLoad:
    """Write the raw store's sends and offer exposures of the last `history_days` before each ends into Redis,
    replacing what an earlier load wrote (what the pipeline and `sendwise materialize` call on the host that
    holds the raw store; no-op counts without Redis)."""
    if settings.online_store != "redis":
        return RawHistoryLoad(0, 0, 0, 0)
    client = connect(settings)
    rows, sends_end, exposures_end = _raw_history(settings)
    ttl = history_ttl_seconds(settings)
    written: set[str] = set()
    with tqdm(total=rows.num_rows, desc="send history into Redis", unit="customer", disable=not progress) as bar:
        for lo in range(0, rows.num_rows, LOAD_CHUNK):  # Python values for a chunk of customers at a time
            pipe = client.pipeline(transaction=True)
            for row in rows.slice(lo, LOAD_CHUNK).to_pylist():
                c = row["customer_id"]
                for key, members, times in (
                    (sent_key(c), row["sent"], row["sent_at"]),
                    (shown_key(c), row["shown"], row["shown_at"]),
                ):
                    pipe.delete(key)
                    if members:
                        pipe.zadd(key, dict(zip(members, times, strict=True)))
                        pipe.expire(key, ttl)
                        written.add(key)
            pipe.execute()
            bar.update(min(LOAD_CHUNK, rows.num_rows - lo))
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
        customers=rows.num_rows,
        sends=int(pc.sum(pc.list_value_length(rows["sent"])).as_py() or 0),
        exposures=int(pc.sum(pc.list_value_length(rows["shown"])).as_py() or 0),
        removed_keys=len(stale),
    )
