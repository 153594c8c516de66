"""Past decisions in Redis, on a tiny home and a real redis-server: the raw store's sends and exposures loaded
once and counted once, decided sends counted as the one-machine history counts them, a TTL on every key, each
process appending to log parts of its own, and erasure leaving no key or value that names the customer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import redis

from features.labels import message_sends
from sendwise.raw import table_path
from sendwise.settings import Settings
from serving.decision_log import DecisionLog, DecisionLogReader, DecisionSink, log_files, parse_log_name, read_entries
from serving.forget import forget_customers
from serving.history import SendHistory
from serving.history_store import (
    SharedHistory,
    decision_ttl_seconds,
    history_ttl_seconds,
    load_raw_history,
)

DB = 7
T = datetime(2026, 11, 1, tzinfo=UTC)
"""Where the tiny raw store's sends end."""


def every_key(client: redis.Redis) -> dict[str, bytes]:
    """Every key of the db with everything it holds, as bytes (strings, sorted sets, sets and hashes)."""
    found = {}
    for raw in client.scan_iter(count=1_000):
        key = raw.decode(errors="backslashreplace")  # Feast's keys are serialized entity keys
        kind = client.type(raw).decode()
        if kind == "string":
            value = client.get(raw) or b""
        elif kind == "zset":
            value = b" ".join(client.zrange(raw, 0, -1))
        elif kind == "set":
            value = b" ".join(sorted(client.smembers(raw)))
        elif kind == "hash":
            value = b" ".join(k + b"=" + v for k, v in client.hgetall(raw).items())
        else:
            raise AssertionError(f"{key}: a {kind} this store does not write")
        found[key] = value
    return found


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[str]:
    """This file's db of the session's redis-server, empty at the start of each test."""
    url = f"{redis_url}/{DB}"
    redis.Redis.from_url(url).flushdb()
    yield url


@pytest.fixture
def home(tmp_path: Path, redis_db: str) -> Settings:
    """A home on Redis whose raw store holds a few sends and offer exposures of three customers."""
    settings = Settings(home=tmp_path / "home", online_store="redis", redis_url=redis_db)
    sends = [  # (customer, message, decision_id, sent at)
        ("cust-alpha", "m-1", "d-came-back", T - timedelta(days=3)),
        ("cust-alpha", "m-2", None, T - timedelta(days=1)),
        ("cust-alpha", "m-0", None, T - timedelta(days=90)),  # older than history_days before the end
        ("cust-beta", "m-3", None, T - timedelta(days=2)),
        ("cust-beta", "m-4", "d-sent-early", T),  # the ESP sent it an hour before the decided send_at
    ]
    email_events = pd.DataFrame(
        [
            {"event": e, "customer_id": c, "message_id": m, "campaign_id": "spring", "decision_id": d, "occurred_at": t}
            for c, m, d, at in sends
            for e, t in (("sent", at), ("delivered", at + timedelta(minutes=2)))
        ]
    )
    offer_events = pd.DataFrame(
        [
            {"event": "exposed", "customer_id": "cust-alpha", "offer_id": "of-1", "occurred_at": T - timedelta(days=4)},
            {"event": "exposed", "customer_id": "cust-gamma", "offer_id": "of-2", "occurred_at": T - timedelta(days=1)},
            {"event": "redeemed", "customer_id": "cust-gamma", "offer_id": "of-3", "occurred_at": T},
        ]
    )
    for name, frame in (("email_events", email_events), ("offer_events", offer_events)):
        path = table_path(settings, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    return settings


Row = tuple[str, str, datetime | None, list[str]]
"""A decision: its id, customer, send_at (None: not sent) and the offers its email carries."""


def _append(
    log: DecisionLog,
    decisions_dir: Path,
    rows: list[Row],
    shared: SharedHistory | None = None,
    sink: DecisionSink | None = None,
) -> None:
    """The decisions of `rows` appended to the log as a decide does, into `shared` (or `sink`) first where given."""
    decisions = [
        {
            "decision_id": d,
            "customer_id": c,
            "send": at is not None,
            "send_at": at.strftime("%Y-%m-%dT%H:%M:%SZ") if at else None,
            "explore": False,
            "propensity": 1.0,
            "holdout": False,
            "reasons": ["a reason"],
        }
        for d, c, at, _ in rows
    ]
    shown = [offers for *_, offers in rows]
    times = {str(d["send_at"]): at.isoformat() for d, (_, _, at, _) in zip(decisions, rows, strict=True) if at}
    facts: list[dict[str, object] | None] = [
        {"template": "promotional", "modules": ["hero_offer"]} if at else None for _, _, at, _ in rows
    ]
    if sink is None and shared is not None:
        sink = shared.record
    log.append(decisions_dir, decisions, shown, shown, {"kind": "promotional"}, {}, times, facts, sink=sink)


def _record(log: DecisionLog, shared: SharedHistory, settings: Settings, rows: list[Row]) -> None:
    _append(log, settings.decisions_dir, rows, shared)


def test_raw_history_is_loaded_once_and_counted_once_as_on_one_machine(home: Settings) -> None:
    loaded = load_raw_history(home, progress=False)
    assert (loaded.customers, loaded.sends, loaded.exposures, loaded.removed_keys) == (3, 4, 2, 0)
    shared = SharedHistory(home)
    log = DecisionLog(per_process=True, indexed=False)
    _record(
        log,
        shared,
        home,
        [
            ("d-came-back", "cust-alpha", T - timedelta(days=3), ["of-7"]),  # the ESP reported it: counted once
            ("d-early", "cust-alpha", T - timedelta(days=2), ["of-8"]),  # before the raw sends end: not counted
            ("d-later", "cust-alpha", T + timedelta(days=1), ["of-9"]),  # after they end: counted
            ("d-sent-early", "cust-beta", T + timedelta(hours=1), ["of-5"]),  # after the end, but reported: not counted
            ("d-skip", "cust-beta", None, []),  # not sent: counts nowhere
            ("d-new", "cust-delta", T + timedelta(hours=5), ["of-1"]),  # no raw history at all
        ],
    )
    one_machine = SendHistory.from_raw(home)
    ids = ["cust-alpha", "cust-beta", "cust-gamma", "cust-delta", "cust-nobody"]
    start = T + timedelta(days=2)
    raw, decided = shared.sends_before(ids, start, 7)
    assert raw.tolist() == [2, 2, 0, 0, 0] and decided.tolist() == [1, 0, 0, 1, 0]
    expected_raw, expected_decided = one_machine.sends_before(ids, start, 7)
    assert raw.tolist() == expected_raw.tolist() and decided.tolist() == expected_decided.tolist()
    assert shared.sends_before(ids, T + timedelta(days=1), 7)[1].tolist() == [0, 0, 0, 1, 0]  # the window's end is open
    assert shared.sends_before(["cust-alpha"], T, 90)[0].tolist() == [2]  # 90 days back: only history_days were loaded

    shown = shared.offers_shown_before(ids, start, 14)
    assert shown == [{"of-1", "of-9"}, set(), {"of-2"}, {"of-1"}, set()]
    assert shown == one_machine.offers_shown_before(ids, start, 14)

    entries = [e for path in log_files(home.decisions_dir) for e, _ in read_entries(path)]
    logged = ["d-came-back", "d-early", "d-later", "d-sent-early", "d-skip", "d-new"]
    assert [e["decision_id"] for e in entries] == logged
    for entry in entries:  # render by id finds what the log keeps, on any replica
        found = SharedHistory(home).find(str(entry["decision_id"]))
        assert found is not None and found.entry == entry
    assert shared.find("d-never-made") is None


def _rows(prefix: str, n: int) -> list[Row]:
    return [
        (f"d-{prefix}-{i}", f"cust-{i % 7}", T + timedelta(days=1, hours=i % 24), [f"of-{i % 3}"]) for i in range(n)
    ]


def _logged_with_recording(log: DecisionLog, shared: SharedHistory, settings: Settings, rows: list[Row]) -> None:
    """`rows` appended as a decide appends a batch: every chunk's script sent first, the answers read after."""
    with shared.recording() as sink:
        _append(log, settings.decisions_dir, rows, sink=sink)


def test_a_batch_of_many_chunks_is_in_redis_when_its_recording_ends(home: Settings) -> None:
    shared = SharedHistory(home)
    log = DecisionLog(per_process=True, indexed=False)
    first = _rows("a", 2_500)  # three chunks of the log, sent before any answer is read
    _logged_with_recording(log, shared, home, first)
    assert not shared.degraded_reasons
    for decision_id, customer_id, _, _ in (first[0], first[1_499], first[-1]):
        found = shared.find(decision_id)
        assert found is not None and found.entry["customer_id"] == customer_id
    decided, counted = shared.sends_before([f"cust-{k}" for k in range(7)], T + timedelta(days=3), 7)
    assert decided.tolist() == [0] * 7 and counted.sum() == 2_500
    shared.client.script_flush()  # Redis lost its scripts (a restart): each chunk is run again the usual way
    second = _rows("b", 1_200)
    _logged_with_recording(log, shared, home, second)
    assert not shared.degraded_reasons
    assert shared.find(second[-1][0]) is not None and shared.find(second[0][0]) is not None
    lines = [e["decision_id"] for path in log_files(home.decisions_dir) for e, _ in read_entries(path)]
    assert len(lines) == 3_700 and lines[-1] == second[-1][0]


def test_a_recording_to_a_redis_gone_degrades_and_the_log_keeps_every_line(home: Settings) -> None:
    gone = Settings(home=home.home, online_store="redis", redis_url="redis://127.0.0.1:1/0")
    shared = SharedHistory(gone)
    log = DecisionLog(per_process=True, indexed=False)
    _logged_with_recording(log, shared, gone, _rows("c", 1_500))
    assert shared.degraded_reasons and "127.0.0.1:1/0 cannot be reached" in shared.degraded_reasons[0]
    assert sum(1 for path in log_files(gone.decisions_dir) for _ in read_entries(path)) == 1_500


def test_every_key_has_a_ttl_and_history_is_trimmed(home: Settings) -> None:
    load_raw_history(home, progress=False)
    shared = SharedHistory(home)
    log = DecisionLog(per_process=True, indexed=False)
    old = T - timedelta(days=home.history_days + 1)
    _record(log, shared, home, [("d-old", "cust-alpha", old, []), ("d-not", "cust-beta", None, [])])
    _record(log, shared, home, [("d-new", "cust-alpha", T + timedelta(days=1), ["of-4"])])
    client = shared.client
    keys = every_key(client)
    assert set(keys) == {
        "sendwise:raw-end",
        "sendwise:sent:cust-alpha",
        "sendwise:sent:cust-beta",
        "sendwise:shown:cust-alpha",
        "sendwise:shown:cust-gamma",
        "sendwise:decided:cust-alpha",
        "sendwise:decisions:cust-alpha",
        "sendwise:decisions:cust-beta",
        "sendwise:decision:d-old",
        "sendwise:decision:d-not",
        "sendwise:decision:d-new",
    }
    for key in keys:
        ttl = client.ttl(key)
        expected = decision_ttl_seconds(home) if ":decision" in key else history_ttl_seconds(home)
        assert expected - 60 < ttl <= expected, key
    assert decision_ttl_seconds(home) == (home.render_days + 1) * 86_400
    assert history_ttl_seconds(home) == (home.history_days + 8) * 86_400
    assert b"d-old" not in keys["sendwise:decided:cust-alpha"]  # older than history_days before the newest send
    assert b"d-new" in keys["sendwise:decided:cust-alpha"]
    assert int(client.hget("sendwise:raw-end", "sent") or 0) == T.timestamp() * 1000


def test_a_load_replaces_the_last_one(home: Settings) -> None:
    load_raw_history(home, progress=False)
    path = table_path(home, "offer_events")
    pd.read_parquet(path).query("customer_id != 'cust-gamma'").to_parquet(path, index=False)
    again = load_raw_history(home, progress=False)
    assert (again.customers, again.exposures, again.removed_keys) == (2, 1, 1)
    assert "sendwise:shown:cust-gamma" not in every_key(redis.Redis.from_url(home.redis_url))


def test_erasure_leaves_no_key_or_value_naming_the_customer(home: Settings) -> None:
    load_raw_history(home, progress=False)
    shared = SharedHistory(home)
    log = DecisionLog(per_process=True, indexed=False)
    _record(
        log,
        shared,
        home,
        [
            ("d-a1", "cust-alpha", T + timedelta(days=1), ["of-1"]),
            ("d-a2", "cust-alpha", None, []),
            ("d-b1", "cust-beta", T + timedelta(days=1), ["of-1"]),
        ],
    )
    assert any(b"cust-alpha" in v or "cust-alpha" in k for k, v in every_key(shared.client).items())

    report = forget_customers(home, ["cust-alpha"], log)

    left = every_key(shared.client)
    assert not [k for k, v in left.items() if "cust-alpha" in k or b"cust-alpha" in v]
    assert not [k for k in left if k.endswith(("d-a1", "d-a2"))]  # their decisions went, whatever they hold
    assert report.rows["redis/history"] == 6  # sent, shown, decided, the decisions set and the two decisions
    assert report.decisions == 2
    assert shared.find("d-b1") is not None
    assert shared.sends_before(["cust-beta"], T + timedelta(days=2), 7)[1].tolist() == [1]
    assert not [
        e for p in log_files(home.decisions_dir) for e, _ in read_entries(p) if e["customer_id"] == "cust-alpha"
    ]


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from serving.decision_log import DecisionLog

    decisions_dir = Path(sys.argv[1])
    decisions = [
        {"decision_id": f"d-child-{i}", "customer_id": "cust-child", "send": True, "send_at": "X",
         "explore": False, "propensity": 1.0, "holdout": False, "reasons": []}
        for i in range(3)
    ]
    DecisionLog(max_bytes=100, per_process=True, indexed=False).append(
        decisions_dir, decisions[:2], [[]] * 2, [[]] * 2, {}, {}, {"X": "2026-11-02T07:00:00+00:00"}, [None] * 2
    )
    DecisionLog(max_bytes=100, per_process=True, indexed=False).append(
        decisions_dir, decisions[2:], [[]], [[]], {}, {}, {"X": "2026-11-02T07:00:00+00:00"}, [None]
    )
    """
)


def test_each_process_appends_to_parts_of_its_own_and_readers_read_every_part(tmp_path: Path) -> None:
    decisions_dir = tmp_path / "decisions"
    rows: list[Row] = [(f"d-parent-{i}", "cust-parent", T + timedelta(days=1), []) for i in range(2)]
    _append(DecisionLog(max_bytes=100, per_process=True, indexed=False), decisions_dir, rows)
    subprocess.run([sys.executable, "-c", CHILD, str(decisions_dir)], check=True, cwd=Path(__file__).parents[1])

    files = log_files(decisions_dir)
    today = datetime.now(UTC).date()
    names = [p.name for p in files]
    own = [n for n in names if n.endswith(f"-{os.getpid()}.jsonl")]
    assert len(own) == 1 and own[0].startswith(f"{today:%Y-%m-%d}.")
    child = [n for n in names if n not in own]  # the child's two batches: the first passed max_bytes, so two parts
    assert len(child) == 2 and child[1] == child[0].removesuffix(".jsonl") + ".1.jsonl"  # by part: .jsonl first
    assert sorted(parse_log_name(n) or (today, -1) for n in names) == [(today, 0), (today, 0), (today, 1)]
    assert not (decisions_dir / "index.sqlite").exists()  # replicas keep no index of their own
    read = sorted(str(e["decision_id"]) for p in files for e, _ in read_entries(p))
    assert read == ["d-child-0", "d-child-1", "d-child-2", "d-parent-0", "d-parent-1"]
    sends = DecisionLogReader(decisions_dir).new_sends()
    assert sorted(s.decision_id or "" for s in sends) == read


def test_the_load_finds_each_messages_send_as_the_labels_do(tmp_path: Path, redis_db: str) -> None:
    """The load reads the raw store through DuckDB; each message's send is still `message_sends`'s (its first
    `sent` event, else its first `delivered` one), in milliseconds, within `history_days` of where sends end."""
    settings = Settings(home=tmp_path / "home", online_store="redis", redis_url=redis_db, history_days=10)
    cutoff = T - timedelta(days=10)
    rows = [  # (event, customer, message, decision_id, time)
        ("sent", "cust-a", "m-edge", None, cutoff - timedelta(minutes=1)),  # sent before the window, delivered in it
        ("delivered", "cust-a", "m-edge", None, cutoff + timedelta(minutes=1)),
        ("delivered", "cust-a", "m-delivered-only", "", T - timedelta(days=2, microseconds=1500)),
        ("sent", "cust-b", "m-twice", "d-9", T - timedelta(days=1)),
        ("sent", "cust-b", "m-twice", "d-9", T - timedelta(days=1, hours=-1)),  # the second sent event: later
        ("open", "cust-b", "m-twice", "d-9", T),  # not a send, and after where sends end
        ("sent", "cust-c", "m-last", None, T - timedelta(microseconds=999)),
        ("sent", "cust-c", "m-old", None, cutoff - timedelta(days=1)),
    ]
    events = pd.DataFrame(rows, columns=["event", "customer_id", "message_id", "decision_id", "occurred_at"])
    events["campaign_id"] = "spring"
    path = table_path(settings, "email_events")
    path.parent.mkdir(parents=True, exist_ok=True)
    events.to_parquet(path, index=False)  # no offer events were ever ingested

    loaded = load_raw_history(settings, progress=False)

    sends = message_sends(events)
    at = sends["send_at"].astype("datetime64[ns, UTC]").astype("int64") // 1_000_000
    kept = sends[at >= at.max() - 10 * 86_400_000]
    expected: dict[str, list[tuple[bytes, float]]] = {}
    for row, ms in zip(kept.itertuples(), at[kept.index], strict=True):
        member = f"d:{row.decision_id}" if row.decision_id else f"m:{row.message_id}"
        expected.setdefault(f"sendwise:sent:{row.customer_id}", []).append((member.encode(), float(ms)))
    client = redis.Redis.from_url(redis_db)
    found = {key: client.zrange(key, 0, -1, withscores=True) for key in expected}
    assert found == {key: sorted(members, key=lambda m: m[1]) for key, members in expected.items()}
    assert {m.decode() for ms in found.values() for m, _ in ms} == {"m:m-delivered-only", "d:d-9", "m:m-last"}
    assert (loaded.customers, loaded.sends, loaded.exposures) == (3, 3, 0)
    assert found["sendwise:sent:cust-c"][0][1] == int(T.timestamp() * 1000) - 1  # 999 µs before T: a millisecond
