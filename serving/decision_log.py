"""The decision log: one JSON object per decision, a file per UTC day (`<home>/decisions/YYYY-MM-DD.jsonl`).

This module owns the log's format: `DecisionLog` appends every decide's entries, `DecisionLogReader` reads
back the sends that frequency caps and no-repeat rules count (`serving.history`). An entry holds
`decision_id`, `customer_id`, `decided_at`, the `campaign`, `send`, `send_at` (isoformat), `explore`,
`propensity`, `offer_ids` (the whole ranking), `exposed_offer_ids` (the offers the email's modules carry: what
a no-repeat rule counts as shown), `holdout`, the `model_versions`, and what measuring lift needs beside the
propensity (`LoggedHours`): the `window_start` (the campaign's time: a holdout's window is counted from it),
and for a send the `policy_hour` (the hour the policy itself chose, in hours after `window_start`: the send hour
unless the decision explored) and `allowed_hours` (how many hours it could have gone at); a decision to send
also keeps what
rendering its email needs (`render`: the template, the ranked offers, the modules and the facts they were chosen
from), one not to send its `reasons`.

`<home>/decisions/index.sqlite` finds a decision's line by its id (`DecisionLog.find`), so that `/v1/render`
can render a logged decision without reading the log: one row per batch (ids from `new_decision_ids` share
the batch's part), written after the lines it points to; a decision it cannot find cannot be rendered.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

INDEX_FILE = "index.sqlite"
LOG_CHUNK = 1_000
"""Decisions encoded and written at a time: a 10,000-decision batch's lines are 15 MB, and encoding them in one
piece held three copies at once."""


def json_lines(records: Sequence[Mapping[str, object]], first_key: str) -> bytes:
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


def new_decision_ids(count: int) -> list[str]:
    """Ids for one batch's decisions: `d-`, 16 hex digits shared by the batch, 16 random ones of each decision's
    own. Each is as hard to guess as 64 random bits (an id in an unsubscribe link tells nothing of another
    recipient's), and the index keeps one row per batch rather than one per decision."""
    batch = os.urandom(8).hex()
    own = os.urandom(8 * count).hex()
    return [f"d-{batch}{own[16 * i : 16 * i + 16]}" for i in range(count)]


def _batch_key(decision_id: str) -> int:
    """The index's key of a decision's batch: the first 60 bits of the batch's part of the id."""
    return int(decision_id[2:17], 16)


def _own_part(decision_id: str) -> int:
    return int(decision_id[18:34], 16)


def _hex_column(ids: list[str], at: int) -> np.ndarray:
    """The 16 hex digits from `at` of every id, as unsigned 64-bit integers (one parse for the batch)."""
    return np.frombuffer(bytes.fromhex("".join([i[at : at + 16] for i in ids])), dtype=">u8").astype(np.uint64)


@dataclass(frozen=True)
class LoggedHours:
    """What inverse-propensity estimates of send times need beside each propensity: the window's start
    (isoformat), and per decision the hour its policy chose (hours after the start, -1 where it is not sent) and
    the number of hours it was allowed (A in the propensity share/A + (1 - share) of the policy's hour)."""

    window_start: str
    policy_hours: list[int]
    allowed_hours: list[int]


@dataclass(frozen=True)
class LoggedDecision:
    """One decision as the log keeps it, and when it was made."""

    entry: dict[str, object]
    decided_at: datetime


class DecisionLog:
    """Appends decisions to the day's file, one batch in one write, one writer at a time, and indexes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index: sqlite3.Connection | None = None
        self._index_owner: tuple[int, Path] | None = None

    def _connection(self, decisions_dir: Path) -> sqlite3.Connection:
        """The index's connection of this process (a process forked from one that had it opens its own)."""
        owner = (os.getpid(), decisions_dir)
        if self._index is None or self._index_owner != owner:
            decisions_dir.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(decisions_dir / INDEX_FILE, timeout=30.0, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS batches (key INTEGER PRIMARY KEY, file TEXT NOT NULL, "
                "decided_at INTEGER NOT NULL, own BLOB NOT NULL, offsets BLOB NOT NULL, lengths BLOB NOT NULL)"
            )
            self._index, self._index_owner = connection, owner
        return self._index

    def _write_index(
        self,
        decisions_dir: Path,
        ids: list[str],
        file: str,
        starts: np.ndarray,
        lengths: np.ndarray,
        decided_at: int,
    ) -> None:
        """One row per batch: its decisions' own parts (sorted), and where each one's line is."""
        keys = (_hex_column(ids, 2) >> np.uint64(4)).astype(np.int64)  # _batch_key of each, at once
        own = _hex_column(ids, 18)  # _own_part of each
        rows = []
        for key in np.unique(keys).tolist():
            part = np.flatnonzero(keys == key)
            order = part[np.argsort(own[part])]
            rows.append(
                (
                    key,
                    file,
                    decided_at,
                    own[order].tobytes(),
                    starts[order].astype(np.int64).tobytes(),
                    lengths[order].astype(np.int64).tobytes(),
                )
            )
        connection = self._connection(decisions_dir)
        with connection:
            connection.executemany("INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?)", rows)

    def find(self, decisions_dir: Path, decision_id: str) -> LoggedDecision | None:
        """The logged decision with this id, or None (never made here, or its day's file is gone)."""
        with self._lock:
            query = "SELECT file, decided_at, own, offsets, lengths FROM batches WHERE key = ?"
            found = self._connection(decisions_dir).execute(query, (_batch_key(decision_id),)).fetchone()
        if found is None:
            return None
        file, decided_at, own_bytes, offsets, lengths = found
        own = np.frombuffer(own_bytes, dtype=np.uint64)
        wanted = np.uint64(_own_part(decision_id))
        at = int(np.searchsorted(own, wanted))
        if at >= len(own) or own[at] != wanted:
            return None
        offset = int(np.frombuffer(offsets, dtype=np.int64)[at])
        length = int(np.frombuffer(lengths, dtype=np.int64)[at])
        try:
            with (decisions_dir / file).open("rb") as handle:
                handle.seek(offset)
                line = handle.read(length)
            entry = orjson.loads(line)
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(entry, dict) or entry.get("decision_id") != decision_id:
            return None
        return LoggedDecision(entry, datetime.fromtimestamp(decided_at, UTC))

    def forget_before(self, decisions_dir: Path, before: datetime) -> int:
        """Drop the index rows of decisions made before `before` (they can no longer be rendered)."""
        with self._lock:
            connection = self._connection(decisions_dir)
            with connection:
                return connection.execute(
                    "DELETE FROM batches WHERE decided_at < ?", (int(before.timestamp()),)
                ).rowcount

    def erase(self, decisions_dir: Path, customer_ids: set[str]) -> int:
        """Remove every logged decision of `customer_ids` (their lines, and so their render facts) and index the
        files again; how many decisions went. Each file is rewritten in place under the lock appends take, so a
        decision appended meanwhile (by this process or another) is neither lost nor counted twice."""
        removed = 0
        with self._lock:
            for path in log_files(decisions_dir):
                with path.open("r+b") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    lines = handle.read().splitlines(keepends=True)
                    kept = [line for line in lines if not _decision_of(line, customer_ids)]
                    if len(kept) == len(lines):
                        continue
                    removed += len(lines) - len(kept)
                    handle.seek(0)
                    handle.write(b"".join(kept))
                    handle.truncate()
                    handle.flush()
                    os.fsync(handle.fileno())
                    self._reindex(decisions_dir, path.name, kept)
            if removed:
                connection = self._connection(decisions_dir)
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                connection.execute("VACUUM")
        return removed

    def _reindex(self, decisions_dir: Path, file: str, lines: list[bytes]) -> None:
        """The index rows of one day's file made again from its lines (their offsets changed)."""
        connection = self._connection(decisions_dir)
        with connection:
            connection.execute("DELETE FROM batches WHERE file = ?", (file,))
        by_time: dict[int, tuple[list[str], list[int], list[int]]] = {}
        at = 0
        for line in lines:
            entry = _entry(line) if line.endswith(b"\n") else None
            decision_id = entry.get("decision_id") if entry is not None else None
            if entry is not None and isinstance(decision_id, str) and entry.get("decided_at"):
                decided_at = int(datetime.fromisoformat(str(entry["decided_at"])).timestamp())
                ids, starts, lengths = by_time.setdefault(decided_at, ([], [], []))
                ids.append(decision_id)
                starts.append(at)
                lengths.append(len(line) - 1)
            at += len(line)
        for decided_at, (ids, starts, lengths) in by_time.items():
            self._write_index(decisions_dir, ids, file, np.array(starts), np.array(lengths), decided_at)

    def append(
        self,
        decisions_dir: Path,
        decisions: Sequence[Mapping[str, object]],
        ranked_offers: Sequence[list[str]],
        shown_offers: Sequence[list[str]],
        campaign: dict[str, object],
        model_versions: dict[str, str | None],
        logged_times: Mapping[str, str],
        render_facts: Sequence[Mapping[str, object] | None],
        hours: LoggedHours | None = None,
    ) -> None:
        """Every decision of a batch, with its exploration flag and propensity. `ranked_offers` and
        `shown_offers` are each decision's whole ranking and the offers its email carries; `render_facts` what
        rendering a sent decision's email needs (None where it is not sent); `logged_times` turns an answer's
        `send_at` (JSON, Z) into the log's (isoformat); `hours` the window and each decision's policy hour."""
        if not decisions:
            return
        now = datetime.now(UTC)
        decided_at = now.isoformat()
        n = len(decisions)
        window_start = hours.window_start if hours is not None else None
        policy_hours = hours.policy_hours if hours is not None else [-1] * n
        allowed_hours = hours.allowed_hours if hours is not None else [0] * n

        def entries(lo: int, hi: int) -> list[dict[str, object]]:
            made = []
            for d, ranked, shown, facts, policy, allowed in zip(
                decisions[lo:hi],
                ranked_offers[lo:hi],
                shown_offers[lo:hi],
                render_facts[lo:hi],
                policy_hours[lo:hi],
                allowed_hours[lo:hi],
                strict=True,
            ):
                entry = {
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
                    "model_versions": model_versions,
                    "window_start": window_start,
                    "policy_hour": policy if policy >= 0 else None,
                    "allowed_hours": allowed if policy >= 0 else None,
                }
                if facts is not None:
                    entry["render"] = facts
                else:
                    entry["reasons"] = d["reasons"]
                made.append(entry)
            return made

        path = decisions_dir / f"{now:%Y-%m-%d}.jsonl"
        starts, lengths = [], []
        with self._lock:
            try:
                handle = path.open("ab")
            except FileNotFoundError:  # the first decision of this home, or its log folder was removed
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = path.open("ab")
            with handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # other processes (the bulk path's workers) append too
                at = handle.seek(0, os.SEEK_END)
                for lo in range(0, len(decisions), LOG_CHUNK):  # a chunk's lines at a time: less memory at once
                    lines = json_lines(entries(lo, lo + LOG_CHUNK), "decision_id")
                    handle.write(lines)
                    ends = np.flatnonzero(np.frombuffer(lines, dtype=np.uint8) == 10)
                    first = np.r_[0, ends[:-1] + 1]
                    starts.append(at + first)
                    lengths.append(ends - first)
                    at += len(lines)
                handle.flush()
            ids = [str(d["decision_id"]) for d in decisions]
            self._write_index(
                decisions_dir, ids, path.name, np.concatenate(starts), np.concatenate(lengths), int(now.timestamp())
            )


def _entry(line: bytes) -> dict[str, object] | None:
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None


def _decision_of(line: bytes, customer_ids: set[str]) -> bool:
    """Whether a log line is a decision for one of `customer_ids`."""
    entry = _entry(line)
    return entry is not None and str(entry.get("customer_id")) in customer_ids


@dataclass(frozen=True)
class LoggedSend:
    """A logged decision to send: to whom, when (ns since the epoch) and the offers its email carried."""

    decision_id: str | None
    customer_id: str
    at: int
    offers: tuple[str, ...]


def logged_send(line: bytes) -> LoggedSend | None:
    """The send one log line decided, or None (not a send, no send time, or not a JSON object)."""
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(entry, dict) or not entry.get("send") or not entry.get("send_at"):
        return None
    at = int(datetime.fromisoformat(entry["send_at"]).timestamp()) * 10**9
    shown = entry.get("exposed_offer_ids")
    if shown is None:  # written before the log said which offers the email carried: the top one did
        shown = entry.get("offer_ids", [])[:1]
    decision_id = entry.get("decision_id")
    return LoggedSend(
        decision_id=None if decision_id is None else str(decision_id),
        customer_id=str(entry["customer_id"]),
        at=at,
        offers=tuple(str(o) for o in shown),
    )


class DecisionLogReader:
    """Reads a home's decision log as it grows: each file from where it was last read, whole lines only."""

    def __init__(self, decisions_dir: Path) -> None:
        self.decisions_dir = decisions_dir
        self._offsets: dict[Path, int] = {}

    def new_sends(self) -> list[LoggedSend]:
        """The sends logged since the last call."""
        if not self.decisions_dir.is_dir():
            return []
        found = []
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
                send = logged_send(line)
                if send is not None:
                    found.append(send)
        return found


def log_files(decisions_dir: Path) -> list[Path]:
    """The log's day files, oldest first (none where nothing was decided)."""
    return sorted(decisions_dir.glob("*.jsonl")) if decisions_dir.is_dir() else []


def read_entries(path: Path) -> Iterator[tuple[dict[str, object], int]]:
    """Every entry of one day's file with the bytes its line takes; a line being written (no newline yet) or
    one that is not a JSON object is skipped."""
    with path.open("rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                yield entry, len(line)
