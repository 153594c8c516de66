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

Files (what erasure or any tool rewriting the log must keep to):
- `decisions/YYYY-MM-DD.jsonl` is a UTC day's first part; once a part holds `decision_log_max_bytes`
  (a setting), the next batch goes to `YYYY-MM-DD.1.jsonl`, then `.2.jsonl`, ... (`log_file_name`,
  `parse_log_name`; `log_files` lists them by day, then part). A batch is never split across parts.
- Replicas sharing a home (`SENDWISE_ONLINE_STORE=redis`) each append to parts of their own, named by host and
  process (`YYYY-MM-DD.<host>-<pid>.jsonl`, then `.1.jsonl`, ...: `process_writer`), so that two writers never
  share a file even where a file lock does not reach across machines; they keep no index (render by id reads
  Redis there). Every reader (`log_files`, `read_entries`, `DecisionLogReader`) takes every writer's parts.
- Every line is one whole JSON object ending in `\n`. Writers append under an exclusive `flock` of the part;
  a writer killed mid-write can leave a torn last line (no newline): the next writer of that part, and
  `DecisionLog.recover` (at the service's start), cut it off under the lock before anything else is written,
  and readers never take a line without its newline, and skip (and log) a line that is not a JSON object.
- An index row names a part and each line's offset and length. It is written after the lines, so a kill
  leaves at worst decisions that are logged but not indexed, never a row pointing at missing bytes; a tool
  that rewrites a part must rewrite (or delete) the rows that name it, under the part's lock.
- Start-up reads only the days the send history needs (`history_days`, by the day in the name).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

logger = logging.getLogger(__name__)

INDEX_FILE = "index.sqlite"
LOG_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:\.([A-Za-z0-9_]*-[A-Za-z0-9_-]*))?(?:\.(\d+))?\.jsonl$")
TAIL_BLOCK = 1 << 16
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


def log_file_name(day: date, part: int = 0, writer: str | None = None) -> str:
    """The name of a day's part: `YYYY-MM-DD.jsonl` for the first, `YYYY-MM-DD.N.jsonl` after it; a writer's
    own parts carry its name: `YYYY-MM-DD.<writer>.jsonl`, `YYYY-MM-DD.<writer>.N.jsonl`."""
    stem = f"{day:%Y-%m-%d}" if writer is None else f"{day:%Y-%m-%d}.{writer}"
    return f"{stem}.jsonl" if part == 0 else f"{stem}.{part}.jsonl"


def _parsed_name(name: str) -> tuple[date, str, int] | None:
    """(day, writer or "", part) of a log file's name, or None for a name that is not one."""
    found = LOG_NAME.match(name)
    if found is None:
        return None
    try:
        return date.fromisoformat(found.group(1)), found.group(2) or "", int(found.group(3) or 0)
    except ValueError:
        return None


def parse_log_name(name: str) -> tuple[date, int] | None:
    """(day, part) of a log file's name, or None for a name that is not one."""
    parsed = _parsed_name(name)
    return None if parsed is None else (parsed[0], parsed[2])


def process_writer() -> str:
    """This process's name in the log parts it writes alone: the host (letters, digits, `_` and `-` only) and
    the process id, so that replicas sharing a home, on one machine or several, never append to one file."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def _cut_torn_tail(handle: BinaryIO, path: Path) -> int:
    """Cut a last line without its newline (a write cut short) off a part its caller holds locked; the file's
    size afterwards."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return 0
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - TAIL_BLOCK)
        handle.seek(start)
        at = handle.read(end - start).rfind(b"\n")
        if at >= 0:
            end = start + at + 1
            break
        end = start
    os.ftruncate(handle.fileno(), end)
    logger.warning("%s: cut off %d bytes of a line whose write was cut short", path, size - end)
    return end


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


DecisionSink = Callable[[list[dict[str, object]], bytes], None]
"""Where a batch's entries go besides the log, each chunk before its lines are written: the entries and their
JSON lines (`serving.history_store` keeps them in Redis)."""


class DecisionLog:
    """Appends decisions to the day's part, one batch at a time under the part's lock, and indexes them.

    With `per_process` each process appends to parts of its own (`process_writer`): what replicas sharing one
    home do, where an index of their own would not see each other's decisions either, so they keep none
    (`indexed` off: render by id then reads the shared store instead, `serving.history_store`)."""

    def __init__(self, max_bytes: int = 128 * 2**20, per_process: bool = False, indexed: bool = True) -> None:
        self.max_bytes = max_bytes
        self.per_process = per_process
        self.indexed = indexed
        self._part: tuple[date, str | None, int] = (date.min, None, 0)
        """The part last written (day, writer, part): where the next batch starts looking."""
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

    def _open_part(self, decisions_dir: Path, day: date) -> tuple[BinaryIO, Path]:
        """The day's part to append to, open and locked (the bulk path's workers append too), a torn tail cut
        off: the last part, or a new one where it holds `max_bytes` (this process's own parts if `per_process`:
        a forked worker's are its own too)."""
        writer = process_writer() if self.per_process else None
        known = self._part[:2] == (day, writer)
        part = self._part[2] if known else _last_part(decisions_dir, day, writer)
        while True:
            path = decisions_dir / log_file_name(day, part, writer)
            try:
                handle = path.open("a+b")
            except FileNotFoundError:  # the first decision of this home, or its log folder was removed
                decisions_dir.mkdir(parents=True, exist_ok=True)
                handle = path.open("a+b")
            fcntl.flock(handle, fcntl.LOCK_EX)
            size = _cut_torn_tail(handle, path)
            if size == 0 or size < self.max_bytes:
                self._part = (day, writer, part)
                return handle, path
            handle.close()
            part += 1

    def recover(self, decisions_dir: Path) -> int:
        """Cut torn last lines (a writer killed mid-write) off every part, each under its lock; how many."""
        cut = 0
        for path in log_files(decisions_dir):
            with path.open("rb") as handle:
                if handle.seek(0, os.SEEK_END) == 0:
                    continue
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) == b"\n":
                    continue
            with path.open("a+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                size = handle.seek(0, os.SEEK_END)
                cut += int(_cut_torn_tail(handle, path) < size)
        return cut

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
        if not self.indexed:
            return 0
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
                    if self.indexed:
                        self._reindex(decisions_dir, path.name, kept)
            if removed and self.indexed:
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
        sink: DecisionSink | None = None,
    ) -> None:
        """Every decision of a batch, with its exploration flag and propensity. `ranked_offers` and
        `shown_offers` are each decision's whole ranking and the offers its email carries; `render_facts` what
        rendering a sent decision's email needs (None where it is not sent); `logged_times` turns an answer's
        `send_at` (JSON, Z) into the log's (isoformat); `hours` the window and each decision's policy hour;
        `sink` is given each chunk's entries and lines before they are written (a failing sink logs nothing)."""
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

        starts, lengths = [], []
        with self._lock:
            handle, path = self._open_part(decisions_dir, now.date())
            with handle:
                at = handle.seek(0, os.SEEK_END)
                for lo in range(0, len(decisions), LOG_CHUNK):  # a chunk's lines at a time: less memory at once
                    chunk = entries(lo, lo + LOG_CHUNK)
                    lines = json_lines(chunk, "decision_id")
                    if sink is not None:
                        sink(chunk, lines)
                    handle.write(lines)  # whole lines: a kill between two chunks leaves no torn line
                    ends = np.flatnonzero(np.frombuffer(lines, dtype=np.uint8) == 10)
                    first = np.r_[0, ends[:-1] + 1]
                    starts.append(at + first)
                    lengths.append(ends - first)
                    at += len(lines)
                handle.flush()
            if not self.indexed:
                return
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


@lru_cache(maxsize=4096)
def _epoch_seconds(stamp: str) -> int:
    """A logged send time (isoformat) in seconds since the epoch: a batch's sends fall on a few window hours, so
    each is parsed once (parsing every entry's was 4% of recording a 10,000-recipient batch in Redis)."""
    return int(datetime.fromisoformat(stamp).timestamp())


def logged_send(entry: dict[str, Any]) -> LoggedSend | None:
    """The send one log entry decided, or None (not a send, or no send time)."""
    if not entry.get("send") or not entry.get("send_at"):
        return None
    at = _epoch_seconds(str(entry["send_at"])) * 10**9
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
    """Reads a home's decision log as it grows: each part from where it was last read, whole lines only, and
    only the parts of days from `since` on (None: every day)."""

    def __init__(self, decisions_dir: Path, since: date | None = None) -> None:
        self.decisions_dir = decisions_dir
        self.since = since
        self._offsets: dict[Path, int] = {}

    @property
    def files_read(self) -> list[Path]:
        """The parts read so far."""
        return sorted(self._offsets)

    def reach_back(self, day: date) -> None:
        """Read the days from `day` on too (a rule reaching further back than the days read so far)."""
        if self.since is not None and day < self.since:
            self.since = day

    def new_sends(self) -> list[LoggedSend]:
        """The sends logged since the last call."""
        found = []
        for path in log_files(self.decisions_dir, self.since):
            offset = self._offsets.get(path, 0)
            size = path.stat().st_size
            if size <= offset:
                continue
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read(size - offset)
            complete = chunk.rfind(b"\n") + 1
            self._offsets[path] = offset + complete
            skipped = 0
            for line in chunk[:complete].splitlines():
                entry = _json_object(line)
                if entry is None:
                    skipped += 1
                elif (send := logged_send(entry)) is not None:
                    found.append(send)
            if skipped:
                logger.warning("%s: skipped %d lines that are not whole JSON objects", path, skipped)
        return found


def log_files(decisions_dir: Path, since: date | None = None) -> list[Path]:
    """The log's parts, every writer's, by day, then writer, then part (none where nothing was decided); from
    the day `since` on if given."""
    if not decisions_dir.is_dir():
        return []
    found = []
    for path in decisions_dir.glob("*.jsonl"):
        parsed = _parsed_name(path.name)
        if parsed is not None and (since is None or parsed[0] >= since):
            found.append((parsed, path))
    return [path for _, path in sorted(found)]


def _last_part(decisions_dir: Path, day: date, writer: str | None = None) -> int:
    parts = [
        parsed[2]
        for path in decisions_dir.glob(f"{day:%Y-%m-%d}*.jsonl")
        if (parsed := _parsed_name(path.name)) is not None and parsed[1] == (writer or "")
    ]
    return max(parts, default=0)


def _json_object(line: bytes) -> dict[str, Any] | None:
    """The JSON object a line holds, or None (a torn or foreign line)."""
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) else None


def read_entries(path: Path) -> Iterator[tuple[dict[str, object], int]]:
    """Every entry of one part with the bytes its line takes. A last line without its newline (being written,
    or torn by a kill) is not taken; a line that is not a JSON object is skipped, and the count logged."""
    skipped = 0
    with path.open("rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(entry, dict):
                yield entry, len(line)
            else:
                skipped += 1
    if skipped:
        logger.warning("%s: skipped %d lines that are not whole JSON objects", path, skipped)
