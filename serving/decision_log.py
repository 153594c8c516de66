"""The decision log: one JSON object per decision, a file per UTC day (`<home>/decisions/YYYY-MM-DD.jsonl`).

This module owns the log's format: `DecisionLog` appends every decide's entries, `DecisionLogReader` reads
back the sends that frequency caps and no-repeat rules count (`serving.history`). An entry holds
`decision_id`, `customer_id`, `decided_at`, the `campaign`, `send`, `send_at` (isoformat), `explore`,
`propensity`, `offer_ids` (the whole ranking), `exposed_offer_ids` (the offers the email's modules carry: what
a no-repeat rule counts as shown), `holdout` and the `model_versions`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson


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


class DecisionLog:
    """Appends decisions to the day's file, one batch in one write, one writer at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def append(
        self,
        decisions_dir: Path,
        decisions: Sequence[Mapping[str, object]],
        ranked_offers: Sequence[list[str]],
        shown_offers: Sequence[list[str]],
        campaign: dict[str, object],
        model_versions: dict[str, str | None],
        logged_times: Mapping[str, str],
    ) -> None:
        """Every decision of a batch, with its exploration flag and propensity. `ranked_offers` and
        `shown_offers` are each decision's whole ranking and the offers its email carries; `logged_times`
        turns an answer's `send_at` (JSON, Z) into the log's (isoformat)."""
        now = datetime.now(UTC)
        decided_at = now.isoformat()
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
                "model_versions": model_versions,
            }
            for d, ranked, shown in zip(decisions, ranked_offers, shown_offers, strict=True)
        ]
        lines = json_lines(entries, "decision_id")
        path = decisions_dir / f"{now:%Y-%m-%d}.jsonl"
        with self._lock:
            try:
                handle = path.open("ab")
            except FileNotFoundError:  # the first decision of this home, or its log folder was removed
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = path.open("ab")
            with handle:
                handle.write(lines)


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
