"""`sendwise push FILE`: a data-contract file of events sent to a running service, as `POST /v1/events` takes them.

The table comes from the file's name as the ingest reads it (`email_events.csv`, `site_events.parquet`,
`offer_events.jsonl`); CSV is read as the ingest reads it (delimiter detected, UTF-8 with or without a BOM),
Parquet with its types, JSON lines one object a line. Columns the contract does not have are left out with a
warning. The rows go in chunks of at most `MAX_EVENTS`, each appended by the service before it answers; a
chunk the service refuses stops the push with the file's row and field, and says how many rows before it were
appended already (pushing the file again is safe: appended events are deduped by `event_id` when merged).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from sendwise import contract
from sendwise.ingest.appended import APPENDABLE, MAX_EVENTS, TABLE_FIELD
from sendwise.ingest.errors import IngestError
from sendwise.ingest.options import check_options
from sendwise.ingest.read import canonical_columns, read_csv, read_parquet

DEFAULT_URL = "http://127.0.0.1:3000"
TIMEOUT_SECONDS = 120.0
JSON_LINES = (".jsonl", ".ndjson", ".json")


class PushError(RuntimeError):
    """A file that cannot be pushed, or a chunk the service refused: the sentence says which row and why."""


@dataclass
class PushResult:
    """What a push sent and what the service answered, summed over the chunks."""

    table: str
    rows: int = 0
    appended: int = 0
    forgotten: int = 0
    pushed: int = 0
    degraded: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def table_of(path: Path) -> str:
    """The contract table a file holds, from its name (`email_events.csv` -> `email_events`)."""
    stem = path.name.lower()
    for suffix in (".csv", ".parquet", *JSON_LINES):
        stem = stem.removesuffix(suffix)
    if stem not in APPENDABLE:
        raise PushError(
            f"{path}: the file's name does not say which table it holds; name it TABLE.csv, TABLE.parquet or "
            f"TABLE.jsonl with TABLE one of {', '.join(APPENDABLE)}"
        )
    return stem


def read_events(path: Path, warnings: list[str]) -> tuple[str, pd.DataFrame]:
    """The table and the rows of an events file, its columns in the contract's spelling."""
    if not path.is_file():
        raise PushError(f"{path}: no such file")
    table = table_of(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = read_csv(path, str(path), check_options(None, None, None, False)).frame
        elif suffix == ".parquet":
            frame = read_parquet(path, str(path)).frame
        elif suffix in JSON_LINES:
            frame = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
        else:
            raise PushError(f"{path}: expected a .csv, .parquet or .jsonl file")
        frame = canonical_columns(contract.TABLES[table], frame, str(path), warnings)
    except IngestError as error:
        raise PushError(str(error)) from error
    except ValueError as error:  # JSON that is not one object a line
        raise PushError(f"{path}: not JSON lines, one object a line ({error})") from error
    return table, frame


def _json_value(value: Any) -> Any:
    """A cell as JSON: missing is None, times ISO 8601, numpy scalars Python's."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return _json_value(value.item())
    return value


def event_chunks(table: str, frame: pd.DataFrame, size: int = MAX_EVENTS) -> Iterator[list[dict[str, Any]]]:
    """The rows as `POST /v1/events` takes them, `size` at a time."""
    columns = list(frame.columns)
    for start in range(0, len(frame), size):
        part = frame.iloc[start : start + size]
        yield [
            {TABLE_FIELD: table, **{c: _json_value(v) for c, v in zip(columns, row, strict=True)}}
            for row in part.itertuples(index=False, name=None)
        ]


def push_file(
    path: Path,
    url: str,
    token: str | None,
    *,
    chunk_size: int = MAX_EVENTS,
    advance: Callable[[int], None] | None = None,
    warnings: list[str] | None = None,
) -> PushResult:
    """Send the events of `path` to the service at `url`; `advance` is told the rows of every chunk answered."""
    found: list[str] = [] if warnings is None else warnings
    table, frame = read_events(path, found)
    result = PushResult(table=table, rows=len(frame), warnings=found)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    endpoint = url.rstrip("/") + "/v1/events"
    done = 0
    with httpx.Client(timeout=TIMEOUT_SECONDS, headers=headers) as client:
        for chunk in event_chunks(table, frame, chunk_size):
            try:
                answer = client.post(endpoint, json={"events": chunk})
            except httpx.HTTPError as error:
                raise PushError(f"{endpoint}: no answer ({error}); {_sent_before(done)}") from error
            if answer.status_code != 202:
                raise PushError(_refusal(path, answer, done))
            body = answer.json()
            result.appended += sum(body.get("appended", {}).values())
            result.forgotten += int(body.get("forgotten", 0))
            result.pushed += int(body.get("pushed", 0))
            result.degraded += [r for r in body.get("reasons", []) if r not in result.degraded]
            done += len(chunk)
            if advance is not None:
                advance(len(chunk))
    return result


def _sent_before(done: int) -> str:
    if not done:
        return "nothing was appended"
    return f"the {done:,} rows before were appended (pushing the file again is safe: events are deduped by event_id)"


def _refusal(path: Path, answer: httpx.Response, done: int) -> str:
    """The service's refusal as a sentence naming the file's rows (1 = the first row after a CSV header)."""
    try:
        body = answer.json()
    except ValueError:
        body = {}
    where = []
    for detail in body.get("details", [])[:5]:
        name = str(detail.get("field", ""))
        if name.startswith("events[") and "]" in name:
            index, _, rest = name.removeprefix("events[").partition("]")
            if index.isdigit():
                column = rest.removeprefix(".")
                label = f"row {done + int(index) + 1}" + (f", column {column}" if column else "")
                where.append(f"{label}: {detail.get('message', '')}")
                continue
        where.append(f"{name}: {detail.get('message', '')}")
    said = "; ".join(where) or str(body.get("message", answer.text[:500]))
    return (
        f"{path}: the service refused it ({answer.status_code} {body.get('error', '')}): {said}; {_sent_before(done)}"
    )
