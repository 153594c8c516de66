"""The decision log survives kills and stays bounded: parts rotate by day and size, a torn last line is cut off
and never read, the index never points at missing bytes, and start-up reads only the days the rules reach."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest

from sendwise.settings import Settings
from serving.decision_log import (
    INDEX_FILE,
    DecisionLog,
    log_file_name,
    log_files,
    new_decision_ids,
    parse_log_name,
    read_entries,
)
from serving.history import SendHistory
from tests.conftest import PipelineHome, home_with_own_decision_log
from training.evaluate import evaluate

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from serving.decision_log import DecisionLog, new_decision_ids

    decisions_dir, max_bytes, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    log = DecisionLog(max_bytes)
    reasons = ["a reason long enough to make every line a few hundred bytes " * 4]
    print("ready", flush=True)
    while True:
        ids = new_decision_ids(batch)
        decisions = [
            {"decision_id": d, "customer_id": f"c-{i}", "send": False, "send_at": None, "explore": False,
             "propensity": 1.0, "holdout": False, "reasons": reasons}
            for i, d in enumerate(ids)
        ]
        log.append(decisions_dir, decisions, [[]] * batch, [[]] * batch, {}, {}, {}, [None] * batch)
    """
)


def _decisions(n: int, send_at: str | None = None) -> list[dict[str, object]]:
    return [
        {
            "decision_id": d,
            "customer_id": f"c-{i}",
            "send": send_at is not None,
            "send_at": send_at,
            "explore": False,
            "propensity": 1.0,
            "holdout": False,
            "reasons": ["not sent"],
        }
        for i, d in enumerate(new_decision_ids(n))
    ]


def _append(log: DecisionLog, decisions_dir: Path, decisions: list[dict[str, object]]) -> None:
    n = len(decisions)
    log.append(decisions_dir, decisions, [[]] * n, [[]] * n, {}, {}, {}, [None] * n)


def _index_rows(decisions_dir: Path) -> list[tuple[int, str, bytes, bytes, bytes]]:
    with sqlite3.connect(decisions_dir / INDEX_FILE) as connection:
        return connection.execute("SELECT key, file, own, offsets, lengths FROM batches").fetchall()


def _check_index(decisions_dir: Path) -> int:
    """Every indexed decision read back from where the index says it is, whole; how many."""
    found = 0
    for key, file, own, offsets, lengths in _index_rows(decisions_dir):
        data = (decisions_dir / file).read_bytes()
        owns = np.frombuffer(own, dtype=np.uint64)
        for own_part, at, length in zip(
            owns, np.frombuffer(offsets, dtype=np.int64), np.frombuffer(lengths, dtype=np.int64), strict=True
        ):
            entry = orjson.loads(data[at : at + length])
            decision_id = entry["decision_id"]
            assert int(decision_id[2:17], 16) == key and int(decision_id[18:34], 16) == int(own_part)
            assert data[at + length : at + length + 1] == b"\n"
            found += 1
    return found


def test_parts_rotate_by_size_and_every_decision_is_found(tmp_path: Path) -> None:
    decisions_dir = tmp_path / "decisions"
    log = DecisionLog(max_bytes=4_000)
    batches = [_decisions(5) for _ in range(12)]
    for batch in batches:
        _append(log, decisions_dir, batch)
    files = log_files(decisions_dir)
    today = datetime.now(UTC).date()
    assert [parse_log_name(p.name) for p in files] == [(today, k) for k in range(len(files))]
    assert files[0].name == f"{today:%Y-%m-%d}.jsonl" and files[1].name == f"{today:%Y-%m-%d}.1.jsonl"
    sizes = [p.stat().st_size for p in files]
    batch_bytes = max(sizes)  # a part passes the limit by at most the batch that crossed it
    assert len(files) >= 3 and all(s < 4_000 + batch_bytes for s in sizes)
    assert all(s >= 4_000 for s in sizes[:-1])
    entries = [entry["decision_id"] for p in files for entry, _ in read_entries(p)]
    assert entries == [d["decision_id"] for batch in batches for d in batch]
    for batch in batches:
        for d in batch:
            found = log.find(decisions_dir, str(d["decision_id"]))
            assert found is not None and found.entry["customer_id"] == d["customer_id"]
    assert _check_index(decisions_dir) == 60
    assert log_file_name(date(2026, 1, 2), 3) == "2026-01-02.3.jsonl"
    assert parse_log_name("index.sqlite") is None and parse_log_name("2026-13-40.jsonl") is None


def test_a_torn_last_line_is_skipped_said_and_cut_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    decisions_dir = tmp_path / "decisions"
    log = DecisionLog()
    first = _decisions(3)
    _append(log, decisions_dir, first)
    (path,) = log_files(decisions_dir)
    whole = path.stat().st_size
    with path.open("ab") as handle:  # what a writer killed mid-line leaves
        handle.write(b'{"decision_id": "d-0123", "customer_id": "c-')
    assert [e["decision_id"] for e, _ in read_entries(path)] == [d["decision_id"] for d in first]

    with path.open("ab") as handle:  # a foreign line inside the log is skipped and said
        handle.write(b"\nnot json\n")
    with caplog.at_level(logging.WARNING, logger="serving.decision_log"):
        assert len(list(read_entries(path))) == 3
    assert "skipped 2 lines that are not whole JSON objects" in caplog.text

    with path.open("ab") as handle:
        handle.write(b'{"decision_id": "d-torn')
    assert DecisionLog().recover(decisions_dir) == 1
    assert path.read_bytes().endswith(b"not json\n")
    with path.open("ab") as handle:
        handle.write(b'{"decision_id": "d-torn')
    second = _decisions(2)
    _append(log, decisions_dir, second)  # the next writer cuts the torn tail off before writing
    lines = path.read_bytes().splitlines(keepends=True)
    assert all(line.endswith(b"\n") for line in lines)
    assert [orjson.loads(line)["decision_id"] for line in lines[-2:]] == [d["decision_id"] for d in second]
    assert path.stat().st_size > whole
    assert all(log.find(decisions_dir, str(d["decision_id"])) is not None for d in first + second)


def _write_day(decisions_dir: Path, day: date, customer_id: str, send_at: datetime) -> None:
    decisions_dir.mkdir(parents=True, exist_ok=True)
    entry = {
        "decision_id": new_decision_ids(1)[0],
        "customer_id": customer_id,
        "send": True,
        "send_at": send_at.isoformat(),
        "exposed_offer_ids": ["of-1"],
    }
    with (decisions_dir / log_file_name(day)).open("ab") as handle:
        handle.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))


def test_start_up_reads_only_the_days_the_rules_reach(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, history_days=30)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    old, recent = now - timedelta(days=60), now - timedelta(days=3)
    _write_day(settings.decisions_dir, old.date(), "c-1", old)
    _write_day(settings.decisions_dir, recent.date(), "c-1", recent)
    history = SendHistory.from_raw(settings)
    raw, decided = history.sends_before(["c-1", "c-2"], now, 7)  # a 7-day cap counts the send 3 days ago
    assert raw.tolist() == [0, 0] and decided.tolist() == [1, 0]
    assert history.offers_shown_before(["c-1"], now, 30) == [{"of-1"}]
    assert [p.name for p in history.log.files_read] == [log_file_name(recent.date())]  # the old day is not read

    raw, decided = history.sends_before(["c-1"], now, 90)  # a rule reaching further reads the older days then
    assert decided.tolist() == [2]
    assert [p.name for p in history.log.files_read] == [log_file_name(old.date()), log_file_name(recent.date())]


def test_a_writer_killed_mid_write_leaves_a_log_that_reads_back_whole(tmp_path: Path) -> None:
    decisions_dir = tmp_path / "decisions"
    rng = np.random.default_rng(11)
    for _ in range(8):
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(decisions_dir), "1000000", "1000"],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        time.sleep(float(rng.uniform(0.02, 0.6)))
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    files = log_files(decisions_dir)
    assert len(files) >= 2  # the writers filled more than one part
    read = sum(1 for path in files for _ in read_entries(path))  # a torn tail is not taken, nothing raises
    DecisionLog().recover(decisions_dir)  # what the service does at start
    lines = [line for path in files for line in path.read_bytes().splitlines(keepends=True)]
    assert all(line.endswith(b"\n") for line in lines)
    ids = [orjson.loads(line)["decision_id"] for line in lines]  # every line whole JSON
    assert len(ids) == len(set(ids)) == read
    indexed = _check_index(decisions_dir)  # every indexed id found where the index says
    assert 0 < indexed <= len(ids)
    assert all(path.stat().st_size < 1_000_000 + 1_000 * 1_200 for path in files)


def test_evaluate_writes_nothing_to_the_homes_decision_log(pipeline_home: PipelineHome, tmp_path: Path) -> None:
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path / "home")
    logged = _decisions(4)
    _append(DecisionLog(), settings.decisions_dir, logged)  # a log with something in it, as a served home has

    def state() -> tuple[dict[str, bytes], list[tuple[int, str, bytes, bytes, bytes]]]:
        return {p.name: p.read_bytes() for p in log_files(settings.decisions_dir)}, _index_rows(settings.decisions_dir)

    before = state()
    result = evaluate(settings, pipeline_home.world, progress=False)
    assert result.customers > 1000  # it decided every customer of the world, three times over
    assert state() == before
    assert [e["decision_id"] for p in log_files(settings.decisions_dir) for e, _ in read_entries(p)] == [
        d["decision_id"] for d in logged
    ]
